"""What a policy gets wrong on the arithmetic worlds, and whether its own samples hold the fix.

The Step-DPO claim needs two things of a policy's failures, and this module measures both:

(a) they are not capacity errors: few first wrong steps are false computations (``verify.KINDS``);
(b) they are reasoning slips the policy can avoid: resampled from the correct prefix at temperature,
    the policy often writes a right step k instead (what rectification turns into in-distribution
    chosen steps).

``taxonomy`` works on any graded responses (an evaluation's ``samples.jsonl`` from any engine);
``resample_rates`` samples step k again with ``transformers`` in-process, like ``policy.evaluate_policy``
does for greedy decoding, so a policy can be checked without Ray.
"""

from __future__ import annotations

import os
import random
from typing import Any

from raystep.steps import build_prompt, split_steps
from raystep.synth import verify


def taxonomy(rows: list[dict[str, Any]], responses: list[str], correct: list[bool]) -> dict[str, Any]:
    """Kinds and categories of the first wrong step of every wrong response (``verify.tally``), plus the
    per-response diagnoses (``first_wrong_step``, ``kind``) in input order."""
    diagnoses = [
        verify.diagnose(r["question"], list(split_steps(resp).steps), ok)
        for r, resp, ok in zip(rows, responses, correct, strict=True)
    ]
    return {
        **verify.tally(diagnoses),
        "diagnoses": [{"first_wrong_step": d.first_wrong_step, "kind": d.kind} for d in diagnoses],
    }


def step_prompts(
    rows: list[dict[str, Any]], responses: list[str], diagnoses: list[dict[str, Any]], template: str
) -> list[tuple[int, str, str]]:
    """``(row index, prompt, question)`` for each response whose first wrong step k is within its steps:
    the prompt continues the response's own correct steps 1..k-1 and ``Step k:``."""
    out = []
    for i, (row, resp, d) in enumerate(zip(rows, responses, diagnoses, strict=True)):
        k = d["first_wrong_step"]
        if not d["kind"] or k < 1:
            continue
        parts = split_steps(resp)
        if k > len(parts):
            continue
        out.append((i, build_prompt(template, row["question"], parts.prefix(k)), row["question"]))
    return out


def resample_rates(
    model_dir: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    responses: list[str],
    diagnoses: list[dict[str, Any]],
    *,
    template: str = "plain",
    n: int = 8,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """For each wrong response, ``n`` samples of its first wrong step from its own correct prefix.

    Returns the share of failures where at least one sample is a right step, the mean share of right
    samples, and both per kind of the original slip.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = step_prompts(rows, responses, diagnoses, template)
    if not items:
        return {"failures": 0, "any_right": 0.0, "mean_right": 0.0, "by_kind": {}}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    torch.manual_seed(seed)
    random.seed(seed)
    per_item: list[tuple[int, float]] = []
    with torch.inference_mode():
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            enc = tokenizer([p for _, p, _ in chunk], return_tensors="pt", padding=True)
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
            )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, (i, _, question) in enumerate(chunk):
                k = diagnoses[i]["first_wrong_step"]
                reading = verify.read_question(question)
                right = 0
                for text in texts[j * n : (j + 1) * n]:
                    body = text.split("\nStep ")[0]
                    right += verify.step_is_right(body, k, reading.expected, reading.events)
                per_item.append((i, right / n))
    by_kind: dict[str, list[float]] = {}
    for i, rate in per_item:
        by_kind.setdefault(diagnoses[i]["kind"], []).append(rate)
    rates = [r for _, r in per_item]
    return {
        "failures": len(rates),
        "samples_per_failure": n,
        "any_right": sum(r > 0 for r in rates) / len(rates),
        "mean_right": sum(rates) / len(rates),
        "by_kind": {
            k: {"n": len(v), "any_right": sum(r > 0 for r in v) / len(v), "mean_right": sum(v) / len(v)}
            for k, v in sorted(by_kind.items())
        },
    }


def diagnose_policy(
    model_dir: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    template: str = "plain",
    resample_n: int = 8,
    max_new_tokens: int = 160,
) -> dict[str, Any]:
    """Greedy accuracy, the taxonomy of its failures and the resampling rates: (a) and (b) in one report."""
    from raystep.synth.policy import evaluate_policy

    greedy = evaluate_policy(model_dir, rows, template=template, max_new_tokens=max_new_tokens)
    tax = taxonomy(rows, greedy["responses"], greedy["correct"])
    rates = resample_rates(
        model_dir, rows, greedy["responses"], tax["diagnoses"], template=template, n=resample_n
    )
    return {
        "problems": greedy["problems"],
        "accuracy": greedy["accuracy"],
        "well_formed": greedy["well_formed"],
        "taxonomy": {k: v for k, v in tax.items() if k != "diagnoses"},
        "resample": rates,
        "responses": greedy["responses"],
        "diagnoses": tax["diagnoses"],
    }


def transfer(
    report: dict[str, Any],
    models: list[str | os.PathLike[str]],
    rows: list[dict[str, Any]],
    template: str = "plain",
    n: int = 8,
) -> list[dict[str, Any]]:
    """At the policy's own held-out failure points (its correct steps 1..k-1, then ``Step k:``), how often
    each of ``models`` (trained from it) writes a right step k, sampled as :func:`resample_rates` does with
    the same seed: whether a step preference learnt on the training problems carries to new ones."""
    return [
        {
            "model": str(m),
            **resample_rates(m, rows, report["responses"], report["diagnoses"], template=template, n=n),
        }
        for m in models
    ]


def render_transfer(report: dict[str, Any], moved: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`transfer`: the policy's right-step rates, then each trained model's."""
    r = report["resample"]
    if not r.get("failures"):
        return "No held-out failure points to sample (the policy got every problem right, or none parsed)."
    lines = [
        f"Step k sampled at the policy's {r['failures']} held-out failure points ({r['samples_per_failure']} "
        "samples each, same seed):",
        "",
        "| model | right step k: any of n | right step k: mean share |",
        "| --- | ---: | ---: |",
        f"| the policy | {100 * r['any_right']:.0f}% | {100 * r['mean_right']:.1f}% |",
    ]
    lines += [f"| {m['model']} | {100 * m['any_right']:.0f}% | {100 * m['mean_right']:.1f}% |" for m in moved]
    return "\n".join(lines)


def render(report: dict[str, Any], label: str = "policy") -> str:
    """A markdown table of a ``diagnose_policy`` report."""
    t, r = report["taxonomy"], report["resample"]
    lines = [
        f"{label}: greedy accuracy {100 * report['accuracy']:.1f}% on {report['problems']} held-out "
        f"problems; {t['wrong']} wrong, first wrong step by category: "
        + ", ".join(f"{c} {n}" for c, n in t["categories"].items()),
        "",
        "| first wrong step | failures | share | resampled step k right (any of n / mean) |",
        "| --- | ---: | ---: | --- |",
    ]
    for kind, count in t["kinds"].items():
        rk = r.get("by_kind", {}).get(kind)
        cell = f"{100 * rk['any_right']:.0f}% / {100 * rk['mean_right']:.0f}%" if rk else "n/a"
        lines.append(
            f"| {kind} ({verify.KINDS[kind]}) | {count} | {100 * count / t['wrong']:.0f}% | {cell} |"
        )
    if r.get("failures"):
        lines.append(
            f"| all | {t['wrong']} | 100% | {100 * r['any_right']:.0f}% / {100 * r['mean_right']:.0f}% "
            f"(n = {r['samples_per_failure']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m raystep.synth.diagnose POLICY``: (a) and (b) for a policy folder on held-out problems."""
    import argparse
    import json
    from pathlib import Path

    from raystep.config import DataConfig, load_config
    from raystep.synth.world import load_problems

    parser = argparse.ArgumentParser(prog="python -m raystep.synth.diagnose", description=main.__doc__)
    parser.add_argument("policy", type=Path, help="a warmed-up (or trained) policy folder")
    parser.add_argument("--problems", type=int, default=200, help="held-out problems (world split test)")
    parser.add_argument("--split", default="test", help="world split to draw them from")
    parser.add_argument("--resample", type=int, default=8, help="samples of the first wrong step")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="world knobs (data.synth.*)"
    )
    parser.add_argument("--json", type=Path, help="also write the full report (responses included) here")
    parser.add_argument(
        "--trained",
        type=Path,
        nargs="+",
        default=[],
        help="models trained from the policy: how often each writes a right step at the policy's failure points",
    )
    args = parser.parse_args(argv)
    cfg = load_config(None, ["data.source=synth", "data.synth.world=story", *args.overrides])
    rows = load_problems(
        DataConfig(source="synth", split=args.split, limit=args.problems, synth=cfg.data.synth)
    )
    report = diagnose_policy(args.policy, rows, resample_n=args.resample)
    print(render(report, str(args.policy)))
    if args.trained:
        print()
        print(render_transfer(report, transfer(report, args.trained, rows, n=args.resample)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
