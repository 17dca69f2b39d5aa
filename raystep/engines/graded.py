"""Generate, then grade, on Ray Data: the streaming core shared by collect and rectify.

Rows flow ``reader -> engine (actor pool) -> compose (a stage's row function that builds the text to
grade) -> GradeUDF (an actor that owns a ``raystep.grading.Grader``) -> fold_errors`` and on to the
stage's shard writer on the workers; they never come back to the driver.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raystep.config import RunConfig
from raystep.engines import build_generator

if TYPE_CHECKING:
    from ray.data import Dataset

GRADE_COLUMNS: tuple[str, ...] = ("pred", "correct", "grade_status", "grade_method", "grade_error")


class GradeUDF:
    """Ray Data class-based UDF: grades ``text_column`` against ``gold_column``.

    The grader's math-verify workers are processes started inside the actor (math-verify's
    ``signal.alarm`` timeouts do not work in an actor's threads). Rows whose generation failed are
    marked ``grade_status = "error"`` without grading; a grader failure marks the batch's rows the same
    way with ``grade_error`` set, so they are counted and never dropped.
    """

    def __init__(
        self,
        text_column: str = "response",
        gold_column: str = "answer",
        workers: int = 1,
        timeout_s: float = 5.0,
    ):
        from raystep.grading import Grader

        self.text_column = text_column
        self.gold_column = gold_column
        self.grader = Grader(workers=workers, timeout_s=timeout_s)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(self.grade_rows(batch.to_pylist()))

    def grade_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            row.update(pred=None, correct=False, grade_status="error", grade_method="none", grade_error=None)
        todo = [r for r in rows if r.get("finish_reason") != "error"]
        if not todo:
            return rows
        try:
            verdicts = self.grader.grade(
                [r[self.text_column] for r in todo], [r[self.gold_column] for r in todo]
            )
        except Exception:
            message = traceback.format_exc(limit=3)
            for row in todo:
                row["grade_error"] = message
            return rows
        for row, verdict in zip(todo, verdicts, strict=True):
            row.update(
                pred=verdict.pred,
                correct=bool(verdict.correct),
                grade_status=verdict.status,
                grade_method=verdict.method,
            )
        return rows


def fold_errors(row: dict[str, Any]) -> dict[str, Any]:
    """Fold ``generation_error`` and ``grade_error`` into the one ``error`` column (None when neither)."""
    errors = [e for e in (row.pop("generation_error", None), row.pop("grade_error", None)) if e]
    row["error"] = "\n".join(errors) if errors else None
    return row


def graded_dataset(
    config: RunConfig, ds: Dataset, compose: Callable[[dict[str, Any]], dict[str, Any]]
) -> Dataset:
    """``ds`` generated, composed and graded, with errors folded into ``error`` (lazy: the stage's
    writer consumes it on the workers).

    Rows follow the engine contract (``prompt``, ``sampling``) and carry ``answer`` (the gold);
    ``compose(row)`` runs after generation and must set ``response`` (the text to grade).
    """
    from ray.data import ActorPoolStrategy

    s = config.sampling
    # blocks of one engine batch, streamed: a stage's fan-out turns one input block into thousands of
    # requests, and one block would go to one engine replica while the others wait
    ds = ds.repartition(target_num_rows_per_block=s.batch_size, strict=True)
    ds = build_generator(config)(ds)
    ds = ds.map(compose)
    ds = ds.map_batches(
        GradeUDF,
        batch_size=max(s.batch_size, 16),
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=1),
        num_cpus=0.5,  # light beside the engine: leaves the stage's read and write tasks a CPU
    )
    return ds.map(fold_errors)
