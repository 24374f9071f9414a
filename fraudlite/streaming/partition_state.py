"""What the scorer keeps per owned input partition besides the customer state itself.

``PartitionBook`` holds, per input partition ``p``:

* ``writers[p]``: its changelog bookkeeping (``state_store.ChangelogWriter``), including the next input
  offset the state reflects;
* ``dirty[p]``: customers changed since its last changelog record (an insertion-ordered set);
* ``decided[p]``: outputs a crashed predecessor already made visible (``idempotence.Decided``), each
  skipped once when its input is processed again;
* ``out_pos[p]``: a lower bound of where its next outputs go in each output partition (recorded in
  every batch's ``positions`` changelog record).

The dicts are created once and only mutated (never rebound), so collaborators may hold them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from fraudlite.streaming.idempotence import Decided
from fraudlite.streaming.state_store import ChangelogWriter

__all__ = ["PartitionBook"]


@dataclass
class PartitionBook:
    """Per input partition bookkeeping (see the module docstring)."""

    writers: dict[int, ChangelogWriter] = field(default_factory=dict)
    dirty: dict[int, dict[str, None]] = field(default_factory=dict)
    decided: dict[int, Decided] = field(default_factory=dict)
    out_pos: dict[int, dict[str, int]] = field(default_factory=dict)

    def output_positions(self, partition: int) -> dict[str, int]:
        """Offsets in the output partitions below which no output of this partition's next input lies."""
        decided = self.decided.get(partition)
        return decided.start if decided is not None else self.out_pos.get(partition, {})

    def found_outputs(self, partition: int, decided: Decided, ends: dict[str, int]) -> None:
        """Record a scan of the output partitions (``idempotence.scan_outputs``)."""
        self.out_pos[partition] = ends
        if decided:
            self.decided[partition] = decided
        else:
            self.decided.pop(partition, None)

    def keep_outputs_of(self, mine: Collection[int]) -> None:
        """Forget the output bookkeeping of partitions not in ``mine``."""
        for p in set(self.decided) | set(self.out_pos):
            if p not in mine:
                self.decided.pop(p, None)
                self.out_pos.pop(p, None)

    def note_sent(self, last_sent: Mapping[tuple[str, int], object]) -> None:
        """After a commit: where the next outputs of each partition go (``(kind, partition) -> future``
        of its last record sent); partitions still skipping a predecessor's outputs keep theirs."""
        for (kind, p), future in last_sent.items():
            if p not in self.decided and future.succeeded():
                self.out_pos.setdefault(p, {})[kind] = future.value.offset + 1

    def clear_state(self) -> None:
        """Forget the changelog bookkeeping and the predecessor's outputs (before a rebuild)."""
        self.writers.clear()
        self.dirty.clear()
        self.decided.clear()

    def clear(self) -> None:
        """Forget everything (a new session)."""
        self.clear_state()
        self.out_pos.clear()
