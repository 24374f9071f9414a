"""Flow control of the scorer's run loop: how many records a batch may take, which partitions to fetch.

* ``adapt_max_records`` keeps a batch well inside ``max.poll.interval.ms`` (else the member is kicked
  out of the group mid-batch): a batch slower than a quarter of the interval shrinks the next ones to
  what fits in that quarter at the rate just measured; fast batches (under a sixteenth) let the size
  grow back.
* ``update_paused`` stops fetching partitions whose event-time buffers are full (``EventTimeSync.full``)
  and resumes the others.
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer, TopicPartition

__all__ = ["adapt_max_records", "update_paused"]

logger = logging.getLogger(__name__)


def adapt_max_records(
    current: int, records: int, seconds: float, limit: int, max_poll_interval_ms: int
) -> int:
    """The next batches' record limit after a batch of ``records`` took ``seconds`` (see the module docstring).

    Args:
        current: the limit the batch ran with.
        records: records in the batch.
        seconds: how long it took (decode to commit).
        limit: the configured ``batch.max_records`` (never exceeded).
        max_poll_interval_ms: the consumer's ``max.poll.interval.ms``.
    """
    budget = max_poll_interval_ms / 1000 / 4
    if seconds > budget and records > 1:
        fits = max(1, int(records * budget / seconds))
        if fits < current:
            logger.warning(
                "batch of %d records took %.1fs (max.poll.interval.ms=%d): batches now at most %d records",
                records, seconds, max_poll_interval_ms, fits,
            )  # fmt: skip
            return fits
    elif seconds < budget / 4 and current < limit and records >= current:
        return min(limit, current * 2)
    return current


def update_paused(
    consumer: KafkaConsumer, held: set[TopicPartition], paused: set[TopicPartition]
) -> set[TopicPartition]:
    """Pause the partitions in ``held`` that are not ``paused`` yet, resume the ``paused`` ones no longer
    held; returns the partitions paused now."""
    if held == paused:
        return paused
    if held - paused:
        consumer.pause(*(held - paused))
    if paused - held:
        consumer.resume(*(paused - held))
    return held
