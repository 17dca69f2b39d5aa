"""The deterministic data order of a training run: which pairs each optimizer step consumes.

The order depends only on (number of pairs, seed, batch sizes, world size), never on timing, so a run
resumed from a checkpoint at step ``s`` consumes exactly the pairs an uninterrupted run would from step
``s`` on: no pair lost or repeated, and the same final step count.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raystep.config import TrainConfig


@dataclass(frozen=True)
class TrainPlan:
    num_pairs: int
    global_batch_size: int
    micro_batch_size: int
    world_size: int
    epochs: int
    seed: int = 42
    max_steps: int | None = None

    @classmethod
    def for_run(cls, train: TrainConfig, num_pairs: int, world_size: int) -> TrainPlan:
        """The plan of a run: batch sizes, epochs, seed and step cap from ``train``, checked."""
        plan = cls(
            num_pairs=num_pairs,
            global_batch_size=train.global_batch_size,
            micro_batch_size=train.micro_batch_size,
            world_size=world_size,
            epochs=train.epochs,
            seed=train.seed,
            max_steps=train.max_steps,
        )
        plan.check()
        return plan

    @property
    def grad_accum(self) -> int:
        """Micro-batches per rank per optimizer step (at least one)."""
        return max(1, self.global_batch_size // (self.micro_batch_size * self.world_size))

    @property
    def effective_batch_size(self) -> int:
        """Pairs per optimizer step: ``micro * accum * world`` (the config's global batch rounded down)."""
        return self.micro_batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_pairs // self.effective_batch_size

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def check(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{self.num_pairs} pairs are fewer than one batch of {self.effective_batch_size} "
                f"(micro {self.micro_batch_size} x accumulation {self.grad_accum} x {self.world_size} workers): "
                "lower train.global_batch_size or add pairs"
            )

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a plan lives as long as its run; one shuffle per epoch
    def epoch_order(self, epoch: int) -> tuple[int, ...]:
        """The epoch's pair order, shuffled once per epoch (every step of the epoch slices it)."""
        order = list(range(self.num_pairs))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return tuple(order)

    def step_pairs(self, step: int) -> list[int]:
        """Pair indices of optimizer step ``step`` (0-based), across all ranks."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        start = offset * self.effective_batch_size
        return list(self.epoch_order(epoch)[start : start + self.effective_batch_size])

    def rank_micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The ``grad_accum`` micro-batches (pair indices) rank ``rank`` runs at ``step``."""
        mine = self.step_pairs(step)[rank :: self.world_size]
        m = self.micro_batch_size
        return [mine[i : i + m] for i in range(0, len(mine), m)]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


def digest(indices: list[int]) -> str:
    """A short fingerprint of a step's pairs, logged per step so a resumed run can be audited."""
    return hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:12]
