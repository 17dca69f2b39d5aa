"""Intervals over seeds, the SFT training mode, the ablation's and the sweep's pure parts, and a tiny
ablation end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from raystep.config import load_config
from raystep.evaluate.stats import mean_interval, paired_difference, t_quantile

# ---- Student-t intervals against values computed by hand ----------------------------------------------

# Closed forms of the t quantile (Hill 1970): df 1 is the Cauchy, df 2 and 4 have algebraic inverses.
P = 0.975
T1 = math.tan(math.pi * (P - 0.5))
T2 = (2 * P - 1) / math.sqrt(2 * P * (1 - P))
_ALPHA = 4 * P * (1 - P)
T4 = 2 * math.sqrt(math.cos(math.acos(math.sqrt(_ALPHA)) / 3) / math.sqrt(_ALPHA) - 1)
TABLE = {9: 2.262, 10: 2.228, 19: 2.093, 30: 2.042, 60: 2.000}
"""Two-sided 95% values of a printed t table (three decimals)."""


def test_t_quantiles_match_closed_forms_and_the_printed_table():
    assert T1 == pytest.approx(12.7062, abs=1e-4) and T2 == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(P, 1) == pytest.approx(T1, rel=1e-9)
    assert t_quantile(P, 2) == pytest.approx(T2, rel=1e-9)
    assert t_quantile(P, 4) == pytest.approx(T4, rel=1e-9)
    for df, value in TABLE.items():
        assert t_quantile(P, df) == pytest.approx(value, abs=5e-4), df
    assert t_quantile(P, 10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile(P, 0)


@pytest.mark.parametrize(
    ("values", "half"),
    [
        # n = 2: mean 0.53, sd 0.06/sqrt(2), sd/sqrt(n) = 0.03
        ([0.50, 0.56], T1 * 0.03),
        # n = 3: sd 0.1
        ([0.4, 0.5, 0.6], T2 * 0.1 / math.sqrt(3)),
        # n = 5: 0.01..0.05, sd = sqrt(0.00025)
        ([0.01, 0.02, 0.03, 0.04, 0.05], T4 * math.sqrt(0.00025) / math.sqrt(5)),
        # n = 11 (df 10, past the old table that fell back to 1.96): 0..10, sd = sqrt(11)
        ([float(i) for i in range(11)], 2.228 * math.sqrt(11) / math.sqrt(11)),
        # n = 31 (df 30): 0..30, sd = sqrt(31 * 32 / 12)
        ([float(i) for i in range(31)], 2.042 * math.sqrt(31 * 32 / 12) / math.sqrt(31)),
    ],
)
def test_mean_interval_by_hand(values, half):
    out = mean_interval(values)
    assert out["mean"] == pytest.approx(sum(values) / len(values))
    assert out["half"] == pytest.approx(half, rel=3e-4)
    assert out["low"] == pytest.approx(out["mean"] - half, rel=3e-4, abs=1e-9)
    assert out["n"] == len(values)


def test_one_seed_has_no_interval_and_pairs_must_match():
    one = mean_interval([0.7])
    assert one["low"] == one["high"] == 0.7 and one["half"] is None
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.3])
    with pytest.raises(ValueError):
        mean_interval([])


def test_paired_difference_is_the_interval_of_per_seed_differences():
    a = [0.50, 0.52, 0.47, 0.55, 0.51]
    b = [0.53, 0.56, 0.49, 0.58, 0.55]  # b - a = 0.03, 0.04, 0.02, 0.03, 0.04: mean 0.032, sd sqrt(0.00007)
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.032)
    assert d["half"] == pytest.approx(T4 * math.sqrt(0.00007) / math.sqrt(5), rel=1e-6)
    assert d["excludes_zero"] is True
    # the same per-arm spread without pairing would not separate them
    assert mean_interval(b)["low"] < mean_interval(a)["high"]
    assert (
        paired_difference(a, [x + y for x, y in zip(a, [0.03, -0.02, 0.01, -0.01, 0.0], strict=True)])[
            "excludes_zero"
        ]
        is False
    )


# ---- the SFT mode -----------------------------------------------------------------------------------------


def test_sft_loss_is_per_token_nll_of_chosen_and_ignores_rejected():
    from raystep.train.loss import preference_loss

    pc, pr = torch.tensor([-6.0, -2.0]), torch.tensor([-1.0, -9.0])
    ref = torch.zeros(2)
    out = preference_loss(pc, pr, ref, ref, beta=0.5, loss_type="sft", chosen_tokens=torch.tensor([3, 2]))
    assert out.losses.tolist() == [2.0, 1.0]
    assert float(out.loss) == 1.5
    other = preference_loss(
        pc, pr * 5, ref, ref, beta=0.5, loss_type="sft", chosen_tokens=torch.tensor([3, 2])
    )
    assert float(other.loss) == 1.5
    with pytest.raises(ValueError, match="chosen_tokens"):
        preference_loss(pc, pr, ref, ref, beta=0.5, loss_type="sft")


def test_pair_texts_by_mode():
    from raystep.steps import build_prompt
    from raystep.train.batch_loss import loss_type
    from raystep.train.pairs import pair_texts

    row = {
        "prompt": "Ann has 3 pens.",
        "initial_reason_steps": "Let's think step by step.\nStep 1: a\nStep 2:",
        "chosen": " good\n",
        "rejected": " bad\n",
        "full_chosen": " good\nThe answer is \\boxed{1}.",
        "full_rejected": " bad\nThe answer is \\boxed{2}.",
    }
    step = pair_texts(row, "plain", "stepdpo")
    dpo = pair_texts(row, "plain", "dpo")
    sft = pair_texts(row, "plain", "sft")
    whole = build_prompt("plain", row["prompt"], row["initial_reason_steps"])
    assert step == (whole, " good\n", " bad\n")
    assert dpo == (whole, row["full_chosen"], row["full_rejected"])
    head = build_prompt("plain", row["prompt"])
    assert sft[0] == head and sft[0] + sft[1] == whole + row["full_chosen"]
    assert sft[0] + sft[2] == whole + row["full_rejected"]
    cfg = load_config(None, ["train.mode=sft"]).train
    assert loss_type(cfg) == "sft"
    assert loss_type(load_config(None, []).train) == "sigmoid"


# ---- the ablation's and the sweep's pure parts -----------------------------------------------------------


def _fake_seed(seed: int, rnd: int, acc: dict[str, float]) -> dict:
    tax = {"wrong": 10, "categories": {"arithmetic": 1, "reasoning": 8, "format": 1, "other": 0}}
    return {
        "seed": seed,
        "round": rnd,
        "collect_accuracy": 0.5,
        "rectify_right_rate": 0.4,
        "pairs": 100,
        "gold_pairs": 100,
        "arms": {a: {"greedy": v, "sampled": v - 0.1, "taxonomy": tax} for a, v in acc.items()},
    }


def test_summary_pairs_every_arm_with_step_dpo_and_tracks_rounds():
    from raystep.experiments.ablate_report import ARMS, METHOD, render, summarize

    cfg = load_config(None, ["data.source=synth"])
    rows = []
    for seed, shift in zip((0, 1, 2), (0.0, 0.02, -0.01), strict=True):
        base = {a: 0.5 + shift + 0.01 * i for i, a in enumerate(ARMS)}
        rows.append(_fake_seed(seed, 1, base))
        rows.append(_fake_seed(seed, 2, {"no training": base[METHOD], METHOD: base[METHOD] + 0.03}))
    report = summarize(rows, [0, 1, 2], 2, 4, 300, cfg)
    assert report["summary"]["greedy"]["no training"]["mean"] == pytest.approx(0.50 + 0.01 / 3)
    d = report["differences"]["greedy"]["no training"]
    assert d["mean"] == pytest.approx(0.04) and d["half"] == pytest.approx(0.0, abs=1e-12)
    assert set(report["differences"]["sampled"]) == set(ARMS) - {METHOD}
    assert [r["round"] for r in report["by_round"]] == [1, 2]
    assert report["by_round"][1]["greedy_vs_warmup"]["mean"] == pytest.approx(0.07)
    text = render({**report, "warmup": {"parameters": 1}, "seconds": 5})
    assert "| Step-DPO (gold) |" in text and "Step-DPO round" in text and "Total time: 5 s." in text


def test_sweep_grid_and_best_settings(tmp_path):
    from raystep.experiments.ablate import load_tuned
    from raystep.experiments.sweep import best_per_mode, grid

    points = grid(["sft", "stepdpo"], [1e-4, 2e-4], [0.1, 0.5])
    assert [p["mode"] for p in points] == ["sft", "sft", "stepdpo", "stepdpo", "stepdpo", "stepdpo"]
    assert points[0]["set"] == ["train.learning_rate=0.0001"]
    assert points[3]["set"] == ["train.learning_rate=0.0001", "train.beta=0.5"]
    scores = [0.5, 0.6, 0.4, 0.7, 0.7, 0.3]
    best = best_per_mode([{**p, "valid_greedy": s} for p, s in zip(points, scores, strict=True)])
    assert best == {
        "sft": ["train.learning_rate=0.0002"],
        "stepdpo": ["train.learning_rate=0.0001", "train.beta=0.5"],
    }
    (tmp_path / "sweep.json").write_text(json.dumps({"best": best}))
    assert load_tuned(tmp_path / "sweep.json") == best
    assert load_tuned(None) == {}


def test_arm_configs_share_the_pairs_and_differ_in_mode_and_tuned_settings(tmp_path):
    from raystep.experiments.ablate import ablate_overrides, arm_config, round_config

    base = load_config(None, [*ablate_overrides(True), f"storage.root={tmp_path}", "name=ab"])
    data = round_config(base, "ab", 3, 2, "/p")
    assert data.name == "ab-s3-r2" and data.model.path == "/p" and data.sampling.seed == 1003
    assert data.data.split == "train" and data.localize.methods == ["verifier"]
    tuned = {"dpo": ["train.learning_rate=0.0003", "train.beta=0.2"]}
    dpo = arm_config(data, "DPO", Path("/x/pairs.jsonl"), tuned)
    gold = arm_config(data, "Step-DPO (gold)", Path("/x/gold.jsonl"), tuned)
    assert (dpo.train.mode, dpo.train.learning_rate, dpo.train.beta) == ("dpo", 3e-4, 0.2)
    assert (gold.train.mode, gold.name, gold.train.pairs) == (
        "stepdpo",
        "ab-s3-r2-stepdpo-gold",
        "/x/gold.jsonl",
    )
    assert gold.train.learning_rate == data.train.learning_rate
    assert dpo.train.epochs == gold.train.epochs == data.train.epochs


def test_pipeline_rounds_need_the_train_stage():
    from raystep.pipeline import run

    cfg = load_config(None, ["data.source=synth"])
    with pytest.raises(ValueError, match="rounds > 1 need the train stage"):
        run(cfg, ["collect", "localize"], rounds=2)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run(cfg, None, rounds=0)
    served = load_config(None, ["data.source=synth", "sampling.engine=endpoint"])
    with pytest.raises(ValueError, match="endpoint engine would sample every round"):
        run(served, None, rounds=2)


def test_a_run_of_some_arms_reports_those_arms_only(tmp_path):
    from raystep.experiments.ablate import run
    from raystep.experiments.ablate_report import METHOD, plot, render, summarize

    cfg = load_config(None, ["data.source=synth", "eval.limit=4"])
    with pytest.raises(ValueError, match=r"unknown arms \['ppo'\]"):
        run(cfg, [0], optional=["ppo"])
    rows = [_fake_seed(s, 1, {"no training": 0.5, "SFT": 0.52 + s / 100, METHOD: 0.55}) for s in (0, 1)]
    report = summarize(rows, [0, 1], 1, 4, 300, cfg)
    assert set(report["summary"]["greedy"]) == {"no training", "SFT", METHOD}
    assert set(report["differences"]["greedy"]) == {"no training", "SFT"}
    text = render({**report, "warmup": {"parameters": 1}, "seconds": 5})
    assert "| SFT |" in text and "| DPO |" not in text and "Step-DPO (gold)" not in text
    assert plot(tmp_path / "ablate.png", report).stat().st_size > 0


def test_each_round_samples_and_trains_from_the_last_rounds_served_model(tmp_path, monkeypatch):
    """Iterative Step-DPO's wiring, with the stages, training and serving recorded instead of run (each
    runs for real in the end-to-end test below and in their own tests): round r's pairs are sampled
    from round r-1's Step-DPO model while it is served, and round r trains from that model."""
    from raystep.experiments import ablate, demo
    from raystep.synth import policy

    policy_dir = tmp_path / "policy"
    calls: list[tuple] = []
    monkeypatch.setattr(policy, "ensure_policy", lambda folder, settings, progress: (policy_dir, {}))
    monkeypatch.setattr("raystep.local_ray.ensure_ray", lambda: None)
    monkeypatch.setattr(ablate, "evaluated", lambda *a, **k: False)
    monkeypatch.setattr(ablate, "pairs_built", lambda cfg: False)

    def label(model_dir) -> str:  # the policy, or the training run a model came from
        return "policy" if Path(model_dir) == policy_dir else Path(model_dir).parent.name

    def serve(server, model_dir, needed=True):
        calls.append(("serve", label(model_dir)))
        return f"http://127.0.0.1:1/{label(model_dir)}/v1"

    def build_pairs(cfg):
        calls.append(("pairs", cfg.name, label(cfg.model.path), cfg.sampling.endpoint.base_url))
        folder = tmp_path / cfg.name
        folder.mkdir()
        for name in ("own", "gold"):
            (folder / f"{name}.jsonl").write_text("{}\n")
        files = {"own": folder / "own.jsonl", "gold": folder / "gold.jsonl"}
        return {
            "collect_accuracy": 0.5,
            "rectify_right_rate": 0.4,
            "pairs": 1,
            "gold_pairs": 1,
            "files": files,
        }

    def train_once(cfg):
        calls.append(("train", cfg.name, label(cfg.model.path), Path(cfg.train.pairs).parent.name))
        return {"model_dir": tmp_path / cfg.name / "model"}

    def evaluate(cfg, model_dir, name, samples):
        calls.append(("eval", label(model_dir), cfg.sampling.endpoint.base_url))
        tax = {"wrong": 1, "categories": {"arithmetic": 1, "reasoning": 0, "format": 0, "other": 0}}
        return {"greedy": 0.5, "sampled": 0.4, "taxonomy": tax, "greedy_folder": str(model_dir)}

    for name, fake in (("serve", serve), ("build_pairs", build_pairs), ("evaluate", evaluate)):
        monkeypatch.setattr(ablate, name, fake)
    monkeypatch.setattr(demo, "train_once", train_once)

    items = [*ablate.ablate_overrides(True), f"storage.root={tmp_path}", "name=it", "eval.limit=4"]
    report = ablate.run(load_config(None, items), [0], rounds=3, samples=2, progress=False, optional=[])
    url = "http://127.0.0.1:1/{}/v1".format
    assert calls == [
        ("serve", "policy"),  # the start policy: its evaluation and round 1's pairs
        ("eval", "policy", url("policy")),
        ("pairs", "it-s0", "policy", url("policy")),
        ("train", "it-s0-stepdpo", "policy", "it-s0"),
        ("serve", "it-s0-stepdpo"),  # round 1's model: its evaluation and round 2's pairs
        ("eval", "it-s0-stepdpo", url("it-s0-stepdpo")),
        ("pairs", "it-s0-r2", "it-s0-stepdpo", url("it-s0-stepdpo")),
        ("train", "it-s0-r2-stepdpo", "it-s0-stepdpo", "it-s0-r2"),
        ("serve", "it-s0-r2-stepdpo"),
        ("eval", "it-s0-r2-stepdpo", url("it-s0-r2-stepdpo")),
        ("pairs", "it-s0-r3", "it-s0-r2-stepdpo", url("it-s0-r2-stepdpo")),
        ("train", "it-s0-r3-stepdpo", "it-s0-r2-stepdpo", "it-s0-r3"),
        ("serve", "it-s0-r3-stepdpo"),  # the last round's model: its evaluation only
        ("eval", "it-s0-r3-stepdpo", url("it-s0-r3-stepdpo")),
    ]
    assert [r["round"] for r in report["per_seed"]] == [1, 2, 3]
    assert [r["round"] for r in report["by_round"]] == [1, 2, 3]
    rounds = report["per_seed"]
    assert rounds[1]["arms"]["no training"] == rounds[0]["arms"]["Step-DPO"]
    assert rounds[2]["arms"]["no training"] == rounds[1]["arms"]["Step-DPO"]
    assert rounds[2]["arms"]["Step-DPO"]["greedy_folder"] == str(tmp_path / "it-s0-r3-stepdpo" / "model")
    assert "| Step-DPO round |" in (tmp_path / "it" / "ablate" / "ablate.md").read_text()


# ---- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)  # 2 models served by one engine, 1 trained
def test_tiny_ablation_end_to_end(tmp_path, ray_local, monkeypatch, serve_starts):
    """warm-up -> pairs -> Step-DPO -> greedy and sampled evaluation -> report. One ``ray.serve.llm``
    engine (vLLM's CPU build) serves the policy, then the trained model loaded into it, sampled through
    the ``endpoint`` engine, as the demo does; a rerun finds everything done and serves nothing. The
    other arms differ only in their training config, and later rounds only in which model they start
    from (both tested above); each would add a training, so they are left out (``optional=[]``, one
    round)."""
    import socket

    from raystep.experiments.ablate import ablate_overrides, run
    from raystep.serve import run as serve_run

    with socket.socket() as sock:  # a free port for the served models
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    cfg = load_config(
        None,
        [
            *ablate_overrides(True),
            f"storage.root={tmp_path}",
            "name=tiny",
            f"serve.port={port}",
            "data.limit=16",
            "eval.limit=8",
            "sampling.n=4",
            "rectify.n=4",
            "train.global_batch_size=2",
            "train.micro_batch_size=1",
            "data.synth.policy.steps=300",
            "data.synth.policy.num_examples=600",
            "data.synth.max_steps=2",
            "data.synth.max_distractors=1",
        ],
    )
    report = run(cfg, [0], rounds=1, samples=2, progress=False, optional=[])
    assert serve_starts == [
        str(tmp_path / "tiny" / "policy")
    ]  # one engine start: the trained model was loaded
    folder = tmp_path / "tiny" / "ablate"
    for name in ("ablate.md", "ablate.json", "ablate.png"):
        assert (folder / name).exists(), name
    first = [r for r in report["per_seed"] if r["round"] == 1][0]
    assert set(first["arms"]) == {"no training", "Step-DPO"}
    assert first["pairs"] > 0 and first["gold_pairs"] == first["pairs"]
    for arm, result in first["arms"].items():
        assert 0.0 <= result["greedy"] <= 1.0 and 0.0 <= result["sampled"] <= 1.0, arm
        assert (result["greedy_samples"], result["sampled_samples"]) == (8, 16), arm
        assert sum(result["taxonomy"]["categories"].values()) == result["taxonomy"]["wrong"]
    answered = {first["arms"][a]["greedy_folder"] for a in first["arms"]}
    assert len(answered) == 2  # each arm answered with its own weights
    assert [r["round"] for r in report["per_seed"]] == [1]
    text = (folder / "ablate.md").read_text()
    assert "| Step-DPO |" in text and "| no training |" in text

    def refuse(_config):
        raise AssertionError("a rerun with every answer in its folder served a model")

    monkeypatch.setattr(serve_run, "start", refuse)
    again = run(cfg, [0], rounds=1, samples=2, progress=False, optional=[])
    assert again["summary"] == report["summary"] and again["by_round"] == report["by_round"]
