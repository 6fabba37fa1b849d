"""Sources of batches: the live replay DB (daemon) and offline datasets (HDF5, JSONL).

A source is anything with the `BatchSource` shape below. The loop never knows where a
batch came from; it only asks for the next one and, when there is none yet, why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from trainer.sources.wait_reason import WaitReason

if TYPE_CHECKING:  # torch: the actor reaches this package and never needs it
    from trainer.training.batch import Batch


class BatchSource(Protocol):
    def next_batch(self) -> Batch | None:
        """The next batch, or None when none can be given now (see `waiting_reason`)."""

    def not_trained(self, batch: Batch) -> None:
        """The loop learned nothing from `batch` (a skipped non-finite step): a budget on the
        samples used must not count it."""

    @property
    def waiting_reason(self) -> WaitReason | None:
        """Why the last `next_batch` returned None (None if it did not)."""

    @property
    def exhausted(self) -> bool:
        """True when the source will never give another batch (end of an offline dataset)."""

    @property
    def epochs_completed(self) -> int:
        """Whole passes over the data so far (per-epoch validation); 0 for a stream without
        epochs, such as the replay DB."""

    def stats(self) -> dict[str, Any]:
        """Extra figures for stats.json and logs (window size, rows seen, epoch, ...)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (cursor, counters, RNG); plain types only."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...
