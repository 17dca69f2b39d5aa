"""The CPU server's batched decode loop, in-process (no Ray): what batching must not change."""

from __future__ import annotations

from pathlib import Path

import pytest

from raystep.serve.decode import BatchDecoder, DecodeRequest, _held_back

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many",
    "How many",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes",
]


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a replica: one thread, no spinning against the rest of the machine
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    yield tok, model, BatchDecoder(model, tok, list(model.generation_config.eos_token_id))
    torch.set_num_threads(threads)


def run(decoder: BatchDecoder, requests: list[DecodeRequest]) -> list[tuple[str, str | None, int, int]]:
    """(text, finish_reason, completion_tokens, number of non-empty deltas) per request."""
    out = [["", None, 0, 0] for _ in requests]
    for step in decoder.run(requests):
        assert len(step) == len(requests)
        for i, delta in enumerate(step):
            if delta is None:
                continue
            assert out[i][1] is None, "nothing may follow a finished row's last delta"
            out[i][0] += delta.text
            out[i][1] = delta.finish_reason
            out[i][2] = delta.completion_tokens
            out[i][3] += bool(delta.text)
    return [tuple(o) for o in out]  # type: ignore[misc]


def test_greedy_batch_of_different_lengths_equals_generate(loaded):
    import torch

    tok, model, decoder = loaded
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    results = run(decoder, [DecodeRequest(i, max_tokens=12, temperature=0.0) for i in ids])
    for prompt_ids, (text, finish, n, pieces) in zip(ids, results, strict=True):
        ref = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False)[
            0, len(prompt_ids) :
        ]
        assert text == tok.decode(ref, skip_special_tokens=True)
        assert n == len(ref)
        assert finish == ("length" if n == 12 else "stop")
        assert pieces > 1


def test_seeded_sample_does_not_depend_on_its_batch(loaded):
    tok, _, decoder = loaded
    ids = [tok(p)["input_ids"] for p in PROMPTS]

    def sampled(seed: int) -> DecodeRequest:
        return DecodeRequest(ids[0], max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)

    alone = run(decoder, [sampled(5)])[0][0]
    in_batch = run(decoder, [DecodeRequest(ids[1], 8, temperature=0.0), sampled(5), sampled(6)])
    assert in_batch[1][0] == alone
    assert in_batch[2][0] != alone


def test_stop_string_cuts_and_is_never_streamed(loaded):
    tok, _, decoder = loaded
    ids = tok(PROMPTS[0])["input_ids"]
    full = run(decoder, [DecodeRequest(ids, 16, temperature=0.0)])[0][0]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full.index(stop)
    streamed: list[str] = []
    for step in decoder.run([DecodeRequest(ids, 16, temperature=0.0, stop=[stop])]):
        if step[0] is not None:
            streamed.append(step[0].text)
            finish = step[0].finish_reason
    assert "".join(streamed) == full[:cut]
    assert finish == "stop"
    assert all(stop not in "".join(streamed[: i + 1]) for i in range(len(streamed)))


def test_cancelled_row_stops_while_the_others_go_on(loaded):
    tok, _, decoder = loaded
    ids = tok(PROMPTS[1])["input_ids"]
    keep, drop = DecodeRequest(ids, 10, temperature=0.0), DecodeRequest(ids, 10, temperature=0.0)
    finishes: dict[int, str] = {}
    for n, step in enumerate(decoder.run([keep, drop])):
        if n == 2:
            drop.cancelled = True
        for i, delta in enumerate(step):
            if delta is not None and delta.finish_reason:
                finishes[i] = delta.finish_reason
    assert finishes[1] == "abort"
    assert finishes[0] in ("length", "stop")


def test_held_back_suffix():
    assert _held_back("the answer is", ["Step"]) == 0
    assert _held_back("the answer St", ["Step"]) == 2
    assert _held_back("the answer Ste", ["\n\n", "Step"]) == 3
    assert _held_back("abc\ufffd", []) == 1
