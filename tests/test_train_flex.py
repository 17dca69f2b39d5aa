"""Block-sparse attention for packed, prefix-shared rows (``raystep.train.attention``), without Ray.

Every attention kind must give the per-pair log-probs and gradients of the textbook two-sequence
computation, in fp32, with several pairs packed per row whose prompts differ in length.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sample_pairs import gsm8k_pairs  # benchmarks/sample_pairs.py (on sys.path via conftest)

from raystep.train import attention as attn
from raystep.train.batch_loss import branch_logps
from raystep.train.pairs import build_batch, expand_segments, tokenize_pairs
from raystep.train.plan import TrainPlan

REPO = Path(__file__).resolve().parents[1]
PER_ROW = 3


@pytest.fixture(scope="module")
def model_and_pairs(tiny_model: Path, shared_data: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    rows = gsm8k_pairs(shared_data / "gsm8k" / "train.jsonl", 7)
    pairs = tokenize_pairs(rows, tok, template="qwen2-boxed")
    return model, pairs


def packed(pairs, kind: str):
    return build_batch(pairs, "shared", 1 << 20, 0, kind, pairs_per_row=PER_ROW)


def logps_and_grads(model, batch, grad: bool = True):
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad):
        logps, _ = branch_logps(model, batch)
    if not grad:
        return logps.detach(), None
    (logps[0::2] - 0.5 * logps[1::2]).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return logps.detach(), grads


@pytest.fixture(scope="module")
def two_sequence(model_and_pairs):
    model, pairs = model_and_pairs
    return logps_and_grads(model, build_batch(pairs, "two_sequence"))


def test_the_batches_pack_several_pairs_with_different_prefixes(model_and_pairs):
    _, pairs = model_and_pairs
    batch = packed(pairs, "varlen")
    rows = batch.input_ids.shape[0]
    assert rows == 3 and batch.num_pairs == 7  # 3 + 3 + 1 pairs
    first_row = [s for s in batch.spans if s[0] == 0]
    assert len(first_row) == PER_ROW
    assert len({len(p.prompt_ids) for p in pairs[:PER_ROW]}) == PER_ROW  # prefixes of different lengths


@pytest.mark.parametrize("kind", ["sdpa", "varlen"])
def test_log_probs_and_gradients_equal_two_sequence(model_and_pairs, two_sequence, kind):
    model, pairs = model_and_pairs
    logps, grads = logps_and_grads(model, packed(pairs, kind))
    ref_logps, ref_grads = two_sequence
    torch.testing.assert_close(logps, ref_logps, rtol=1e-6, atol=2e-4)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-4, atol=1e-5)
    assert ref_grads.abs().max() > 1e-2  # the comparison is not between zeros


def test_flex_block_mask_log_probs_and_gradients_equal_two_sequence(
    model_and_pairs, two_sequence, monkeypatch
):
    """flex_attention's own eager implementation on CPU, driven by raystep's BlockMask.

    torch refuses flex backward on CPU with a device check (its compiled CPU kernel has no backward); the
    eager path underneath is flex's reference math and differentiates fine, so the check is lifted here
    to test the mask's gradients. On CUDA the fused kernels run (``benchmarks/bench_train.py --check``).
    """
    import torch.nn.attention.flex_attention as fa

    model, pairs = model_and_pairs
    batch = packed(pairs, "flex")
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        logps_and_grads(model, batch)  # what a CPU user gets: torch's own refusal
    monkeypatch.setattr(fa, "_validate_device", lambda *tensors: None)
    logps, grads = logps_and_grads(model, packed(pairs, "flex"))
    ref_logps, ref_grads = two_sequence
    torch.testing.assert_close(logps, ref_logps, rtol=1e-6, atol=2e-4)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-4, atol=1e-5)


def test_flex_under_torch_compile_equals_two_sequence(model_and_pairs, two_sequence, monkeypatch):
    """The compiled flex kernel (as on CUDA) runs forward-only on CPU."""
    model, pairs = model_and_pairs
    monkeypatch.setattr(attn, "FLEX_COMPILE", True)
    logps, _ = logps_and_grads(model, packed(pairs, "flex"), grad=False)
    torch.testing.assert_close(logps, two_sequence[0], rtol=1e-6, atol=2e-4)


def test_one_rule_three_encodings(model_and_pairs):
    """Dense mask, BlockMask and per-span masks allow exactly the same query-key pairs on real tokens,
    and the BlockMask keeps exactly the blocks that hold an allowed pair (the rest are skipped)."""
    from torch.nn.attention.flex_attention import create_mask

    _, pairs = model_and_pairs
    batch = packed(pairs, "sdpa")
    rows, length = batch.input_ids.shape
    _, group, branch = expand_segments(batch.segments, rows, length, batch.real_tokens)
    real = group >= 0
    dense = attn.dense_mask(group, branch)[:, 0] & real[:, :, None] & real[:, None, :]
    assert int(dense.sum()) == batch.attended  # the FLOP count's pairs are the rule's pairs

    block = attn.block_mask(group, branch)
    flex_dense = create_mask(block.mask_mod, rows, 1, length, length)[:, 0]
    assert torch.equal(flex_dense, dense)
    size = block.BLOCK_SIZE[0]
    blocks = -(-length // size)
    pad = blocks * size - length
    any_allowed = torch.nn.functional.pad(dense, (0, pad, 0, pad)).view(rows, blocks, size, blocks, size)
    any_allowed = any_allowed.any(4).any(2)
    assert torch.equal(block.to_dense()[:, 0].bool(), any_allowed)
    causal_blocks = rows * blocks * (blocks + 1) // 2
    assert int(any_allowed.sum()) < causal_blocks  # cross-pair blocks are skipped

    plan = attn.span_plan(batch.spans, rows, length, "cpu")
    per_span = torch.zeros_like(dense)
    for (r, start, n, _, _), mask in zip(plan.table, plan.masks, strict=True):
        window = slice(start, start + n)
        per_span[r, window, window] = torch.ones(n, n, dtype=torch.bool).tril() if mask is None else mask
    assert torch.equal(per_span, dense)


def test_rejected_never_sees_chosen_in_any_kind(model_and_pairs):
    model, pairs = model_and_pairs
    altered = copy.deepcopy(pairs)
    altered[1].chosen_ids = [(t + 5) % 100 for t in altered[1].chosen_ids]
    for kind in ("sdpa", "varlen"):
        a, _ = logps_and_grads(model, packed(pairs, kind), grad=False)
        b, _ = logps_and_grads(model, packed(altered, kind), grad=False)
        assert a[2] != b[2]  # pair 1's chosen changed
        keep = [k for k in range(len(a)) if k != 2]
        torch.testing.assert_close(a[keep], b[keep], rtol=0, atol=1e-5)


def test_packing_removes_padding(model_and_pairs):
    _, pairs = model_and_pairs
    one = build_batch(pairs, "shared", 1 << 20, 0, "varlen", pairs_per_row=1)
    many = build_batch(pairs, "shared", 1 << 20, 0, "varlen", pairs_per_row=len(pairs))
    assert one.real_tokens == many.real_tokens == sum(p.shared_tokens for p in pairs)
    assert one.padded_tokens > 1.15 * one.real_tokens  # rows padded to the longest pair
    assert many.padded_tokens == many.real_tokens  # one row: no padding at all


def test_attention_choice_and_config_override():
    from raystep.config import load_config

    assert attn.resolve("auto", "cpu") == "varlen"
    assert attn.resolve("auto", "cuda:0") == ("flex" if attn.flex_available() else "varlen")
    assert attn.resolve("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="unknown attention"):
        attn.resolve("flash", "cpu")
    assert load_config(None, ["train.attention=varlen"]).train.attention == "varlen"
    with pytest.raises(Exception, match="flex_attention backward on CPU"):
        load_config(None, ["train.attention=flex", "train.use_gpu=false"])


def test_each_epoch_is_shuffled_once():
    plan = TrainPlan(num_pairs=40, global_batch_size=8, micro_batch_size=2, world_size=2, epochs=2)
    TrainPlan.epoch_order.cache_clear()
    for step in range(plan.total_steps):
        plan.rank_micro_batches(step, 0)
        plan.step_pairs(step)
    assert TrainPlan.epoch_order.cache_info().misses == 2  # one shuffle per epoch, not per step


def test_bench_runs_without_ray_deepspeed_or_pydantic(tmp_path, shared_data):
    """The GPU machine has torch + transformers only: the bench and the step code it imports must run."""
    code = (
        "import sys, runpy\n"
        "for m in ('ray', 'deepspeed', 'pydantic', 'math_verify', 'trl'):\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = ['bench_train.py', '--smoke', '--no-live', '--json', {str(tmp_path / 'out.json')!r}]\n"
        f"runpy.run_path({str(REPO / 'benchmarks' / 'bench_train.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRL left out" in proc.stdout
    result = json.loads((tmp_path / "out.json").read_text())
    names = set(result["results"])
    assert {"two-sequence", "shared varlen 4/row", "shared sdpa dense 1/row"} <= names
    assert all("seconds_per_pair" in r for r in result["results"].values())
