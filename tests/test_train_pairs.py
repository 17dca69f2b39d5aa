"""Tokenization, prefix-shared packing, the losses, the data plan and the step log (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sample_pairs import gsm8k_pairs  # benchmarks/sample_pairs.py (on sys.path via conftest)

from raystep.config import TrainConfig
from raystep.records import read_jsonl
from raystep.steps import build_prompt
from raystep.train.batch_loss import batch_loss, branch_logps
from raystep.train.loss import preference_loss
from raystep.train.metrics import StepLog
from raystep.train.pairs import build_batch, pack_rows, tokenize_pair, tokenize_pairs
from raystep.train.plan import TrainPlan, digest
from raystep.train.reference import score_pairs


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval(), tok


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    return gsm8k_pairs(shared_data / "gsm8k" / "train.jsonl", 6)


def plain_logps(model, pair) -> list[float]:
    """The textbook computation: each branch as its own sequence, no custom mask, no packing."""
    out = []
    for branch in (pair.chosen_ids, pair.rejected_ids):
        ids = torch.tensor([pair.prompt_ids + branch])
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
        p = len(pair.prompt_ids)
        out.append(sum(logprobs[p - 1 + j, t].item() for j, t in enumerate(branch)))
    return out


def test_sample_pairs_have_step_dpo_shape(rows):
    for row in rows:
        assert row["initial_reason_steps"] and row["chosen"] != row["rejected"]
        assert len(row["initial_reason_steps"]) > len(row["chosen"])


def test_tokenize_joins_like_step_dpo_without_eos(model_and_tokenizer, rows):
    _, tok = model_and_tokenizer
    pair = tokenize_pair(
        rows[0], tok, index=0, template="qwen2-boxed", max_length=1024, max_prompt_length=512
    )
    prompt = build_prompt("qwen2-boxed", rows[0]["prompt"], rows[0]["initial_reason_steps"])
    assert tok.decode(pair.prompt_ids) == prompt
    assert tok.decode(pair.chosen_ids) == rows[0]["chosen"]
    assert tok.eos_token_id not in pair.chosen_ids + pair.rejected_ids
    assert pair.prompt_cut == 0 and pair.response_cut == 0


def test_truncation_cuts_prompt_from_left_and_counts(model_and_tokenizer, rows):
    _, tok = model_and_tokenizer
    full = tokenize_pair(
        rows[0], tok, index=0, template="qwen2-boxed", max_length=1024, max_prompt_length=512
    )
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    max_length = longest + 40
    cut = tokenize_pair(
        rows[0], tok, index=0, template="qwen2-boxed", max_length=max_length, max_prompt_length=20
    )
    assert cut.chosen_ids == full.chosen_ids and cut.rejected_ids == full.rejected_ids
    assert len(cut.prompt_ids) + longest == max_length
    assert cut.prompt_cut == len(full.prompt_ids) - len(cut.prompt_ids) > 0
    assert cut.prompt_ids == full.prompt_ids[-len(cut.prompt_ids) :]


def test_dpo_mode_uses_whole_responses_after_the_shared_prefix(model_and_tokenizer, rows):
    """A whole response is ``initial_reason_steps + full_*``: the prefix (the same in both branches, so
    its log-probs cancel in the loss) sits in the prompt and the branches are the full continuations."""
    _, tok = model_and_tokenizer
    row = rows[0]
    pair = tokenize_pair(row, tok, index=0, template="qwen2-boxed", mode="dpo")
    assert tok.decode(pair.prompt_ids) == build_prompt(
        "qwen2-boxed", row["prompt"], row["initial_reason_steps"]
    )
    assert tok.decode(pair.chosen_ids) == row["full_chosen"]
    assert tok.decode(pair.rejected_ids) == row["full_rejected"]
    sft = tokenize_pair(row, tok, index=0, template="qwen2-boxed", mode="sft")
    assert tok.decode(sft.prompt_ids) == build_prompt("qwen2-boxed", row["prompt"])
    assert tok.decode(sft.prompt_ids + sft.chosen_ids) == tok.decode(pair.prompt_ids + pair.chosen_ids)


def test_prefix_shared_logps_equal_two_sequence(model_and_tokenizer, rows):
    model, tok = model_and_tokenizer
    pairs = tokenize_pairs(rows, tok, template="qwen2-boxed", max_length=1024, max_prompt_length=512)
    budget = 2 * max(p.shared_tokens for p in pairs)
    assert any(len(r) >= 2 for r in pack_rows(pairs, budget)), "the test must pack several pairs per row"
    expected = torch.tensor([v for p in pairs for v in plain_logps(model, p)])
    with torch.no_grad():
        shared, counts = branch_logps(model, build_batch(pairs, "shared", budget))
        two_seq, _ = branch_logps(model, build_batch(pairs, "two_sequence"))
    assert counts.tolist() == [n for p in pairs for n in (len(p.chosen_ids), len(p.rejected_ids))]
    torch.testing.assert_close(shared, expected, rtol=1e-6, atol=2e-4)
    torch.testing.assert_close(two_seq, expected, rtol=1e-6, atol=2e-4)


def test_prefix_shared_gradients_equal_two_sequence(model_and_tokenizer, rows):
    model, tok = model_and_tokenizer
    pairs = tokenize_pairs(rows[:2], tok, template="qwen2-boxed")
    grads = []
    for layout in ("shared", "two_sequence"):
        model.zero_grad()
        logps, _ = branch_logps(model, build_batch(pairs, layout, 4096))
        (logps[0::2] - logps[1::2]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_rejected_branch_cannot_see_chosen(model_and_tokenizer, rows):
    model, tok = model_and_tokenizer
    pairs = tokenize_pairs(rows[:2], tok, template="qwen2-boxed")
    altered = tokenize_pairs(rows[:2], tok, template="qwen2-boxed")
    altered[0].chosen_ids = [(t + 7) % len(tok) for t in altered[0].chosen_ids]
    with torch.no_grad():
        a, _ = branch_logps(model, build_batch(pairs, "shared", 4096))
        b, _ = branch_logps(model, build_batch(altered, "shared", 4096))
    assert a[0] != b[0]  # the chosen branch did change
    torch.testing.assert_close(a[1:], b[1:], rtol=0, atol=1e-5)


def test_shared_layout_processes_fewer_tokens(model_and_tokenizer, rows):
    _, tok = model_and_tokenizer
    pairs = tokenize_pairs(rows, tok, template="qwen2-boxed")
    shared = build_batch(pairs, "shared", 4096).real_tokens
    two = build_batch(pairs, "two_sequence").real_tokens
    assert shared == sum(p.shared_tokens for p in pairs)
    assert two / shared > 1.5


def test_sigmoid_loss_matches_hand_computation():
    pc, pr = torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -9.0])
    rc, rr = torch.tensor([-10.5, -12.0]), torch.tensor([-10.5, -10.0])
    beta = 0.5
    out = preference_loss(pc, pr, rc, rr, beta=beta)
    h = [(-10.0 + 10.5) - (-11.0 + 10.5), (-12.0 + 12.0) - (-9.0 + 10.0)]  # [1.0, -1.0]
    hand = [-math.log(1 / (1 + math.exp(-beta * x))) for x in h]
    torch.testing.assert_close(out.losses, torch.tensor(hand))
    torch.testing.assert_close(out.loss, torch.tensor(sum(hand) / 2))
    torch.testing.assert_close(out.chosen_rewards, beta * (pc - rc))
    assert out.margins[0] > 0 > out.margins[1]
    assert out.losses[0] < math.log(2) < out.losses[1]  # preferring chosen lowers the loss


def test_beta_and_label_smoothing():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-5.0, -7.0, -6.0, -6.0))  # h = 2
    sharp = preference_loss(pc, pr, rc, rr, beta=2.0).loss.item()
    soft = preference_loss(pc, pr, rc, rr, beta=0.1).loss.item()
    assert sharp == pytest.approx(math.log1p(math.exp(-4.0)))
    assert soft == pytest.approx(math.log1p(math.exp(-0.2)))
    eps = 0.2
    smoothed = preference_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=eps).loss.item()
    hand = (1 - eps) * math.log1p(math.exp(-1.0)) + eps * math.log1p(math.exp(1.0))
    assert smoothed == pytest.approx(hand)


def test_ipo_loss_and_nll_term():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-5.0, -7.0, -6.0, -6.0))  # h = 2
    ipo = preference_loss(pc, pr, rc, rr, beta=0.25, loss_type="ipo").loss.item()
    assert ipo == pytest.approx((2.0 - 1 / (2 * 0.25)) ** 2)  # target margin 2: zero loss
    assert preference_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo").loss.item() == pytest.approx(1.0)
    base = preference_loss(pc, pr, rc, rr, beta=0.5).loss.item()
    with_nll = preference_loss(
        pc, pr, rc, rr, beta=0.5, nll_weight=0.5, chosen_tokens=torch.tensor([10])
    ).loss
    assert with_nll.item() == pytest.approx(base + 0.5 * 5.0 / 10)
    with pytest.raises(ValueError, match="unknown loss"):
        preference_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")


def test_batch_loss_backward_with_precomputed_reference(model_and_tokenizer, rows):
    model, tok = model_and_tokenizer
    pairs = tokenize_pairs(rows[:4], tok, template="qwen2-boxed")
    table = score_pairs(model, pairs, batch_pairs=3)
    # two "ranks" of the same pass give the same table as one
    split = {**score_pairs(model, pairs, batch_pairs=3, rank=0, world_size=2)}
    split.update(score_pairs(model, pairs, batch_pairs=3, rank=1, world_size=2))
    assert split.keys() == table.keys()
    for k in table:
        assert split[k] == pytest.approx(table[k], abs=1e-3)
    for p in pairs:
        p.ref_chosen_logp, p.ref_rejected_logp = table[p.index]
    out = batch_loss(model, build_batch(pairs, "shared"), TrainConfig(beta=0.5))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    # fresh pairs carry no reference, so only the ref_model pass can give policy == reference
    live_batch = build_batch(tokenize_pairs(rows[:4], tok, template="qwen2-boxed"), "shared")
    assert live_batch.ref_logps is None
    live = batch_loss(model, live_batch, TrainConfig(beta=0.5), ref_model=model)
    assert live.loss.item() == pytest.approx(math.log(2), abs=1e-5)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_plan_is_deterministic_and_covers_each_pair_once_per_epoch():
    plan = TrainPlan(num_pairs=37, global_batch_size=8, micro_batch_size=2, world_size=2, epochs=2, seed=3)
    assert plan.grad_accum == 2 and plan.steps_per_epoch == 4 and plan.total_steps == 8
    seen = [i for step in range(4) for i in plan.step_pairs(step)]
    assert len(seen) == len(set(seen)) == 32
    again = TrainPlan(37, 8, 2, 2, 2, seed=3)
    assert [digest(plan.step_pairs(s)) for s in range(8)] == [digest(again.step_pairs(s)) for s in range(8)]
    assert plan.step_pairs(0) != plan.step_pairs(4)  # a new shuffle each epoch
    ranks = [i for r in range(2) for mb in plan.rank_micro_batches(1, r) for i in mb]
    assert sorted(ranks) == sorted(plan.step_pairs(1))
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainPlan(5, 8, 2, 2, 1).check()


def test_step_log_drops_rows_past_the_checkpoint(tmp_path):
    log = StepLog(tmp_path)
    log.start(0, 6)
    for s in range(1, 5):
        log.log({"step": s})
    log.start(2, 6)  # resumed from the step-2 checkpoint: steps 3-4 will be redone
    log.log({"step": 3})
    assert [r["step"] for r in log.rows()] == [1, 2, 3]
    assert [e["event"] for e in _events(tmp_path)] == ["start", "resume"]


def _events(folder: Path) -> list[dict]:
    return read_jsonl(folder / "events.jsonl")


def test_bad_pair_rows_name_file_and_line_or_go_to_rejects(tmp_path, rows):
    import json

    from raystep.config import load_config
    from raystep.records import RowError
    from raystep.runs import RunDir
    from raystep.train.run import load_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "q"}) + "\n" + json.dumps(rows[1]) + "\n"
    )
    config = load_config(None, [f"storage.root={tmp_path}", f"train.pairs={path}"])
    with pytest.raises(RowError, match=r"pairs.jsonl:2: missing field 'initial_reason_steps'"):
        load_pairs(config, RunDir.from_config(config))
    config = load_config(None, [f"storage.root={tmp_path}", f"train.pairs={path}", "data.rejects=true"])
    kept, _, rejects = load_pairs(config, RunDir.from_config(config))
    assert len(kept) == 2 and rejects.count == 1
    assert json.loads(rejects.path.read_text())["line"] == 2
