"""Out-of-distribution chosen steps: the world's own correct step k, in a wording the policy never uses.

The paper compares chosen steps the policy wrote itself (rectified, in-distribution) with chosen steps
written by someone else (humans or GPT-4, out-of-distribution). Here the world plays the other writer:
for each pair it writes the correct step k from the pair's own (correct) prefix, in a reference
wording (``Since Ann gives 3 apples to Ben, Ben has 5 + 3 = 8 apples.``) unlike the policy's learned
``Ann gives 3 apples to Ben, so 5 + 3 = 8.``. The verifier accepts both: only the wording differs, as
it would between a policy and GPT-4.
"""

from __future__ import annotations

from typing import Any

from raystep.synth.verify import Reading, read_question
from raystep.synth.world import answer_line


def reference_step(reading: Reading, k: int) -> str:
    """Step k's body (after ``Step k:``) in the reference wording; the last one carries the answer line."""
    if not 1 <= k <= len(reading.events):
        raise ValueError(f"step {k} is outside 1..{len(reading.events)}")
    values = reading.expected
    op, n = reading.events[k - 1]
    sentence = reading.step_sentences[k - 1]
    since = sentence[0].lower() + sentence[1:] if sentence.split(" ")[0] in ("He", "She") else sentence
    body = f" Since {since}, {reading.owner} has {values[k - 1]} {op} {n} = {values[k]} {reading.item}."
    return body + ("\n" + answer_line(values[-1]) if k == len(reading.events) else "\n")


def reference_continuation(reading: Reading, k: int) -> str:
    """Steps k..n in the reference wording (after ``Step k:``), ending with the answer line."""
    parts = [reference_step(reading, k)]
    parts += [f"Step {j}:" + reference_step(reading, j) for j in range(k + 1, len(reading.events) + 1)]
    return "".join(parts)


def ood_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same pairs (prompt, prefix, rejected) with the chosen step written by the world instead.

    Rows whose step index lies past the question's events (a wrong extra step has no right step k)
    are left out; the count that remains is what the out-of-distribution arm trains on.
    """
    out = []
    for row in rows:
        reading = read_question(row["prompt"])
        k = int(row["step_index"])
        if not 1 <= k <= len(reading.events):
            continue
        out.append(
            {
                **row,
                "chosen": reference_step(reading, k),
                "full_chosen": reference_continuation(reading, k),
                "pair_id": f"{row['pair_id']}-ood",
            }
        )
    return out
