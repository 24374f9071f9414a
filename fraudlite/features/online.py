"""Online (incremental) features: the same FeatureSpec as ``offline.compute_features``, one batch at a time.

* ``CustomerState`` (``fraudlite.features.customer_state``): per input partition, fixed memory per
  customer in preallocated numpy arrays; customer ids are hashed to 64-bit keys (``customer_keys``,
  ``fraudlite.features.customer_index``).
* ``TerminalTable`` (``fraudlite.features.terminal_table``): one global table of per-terminal day
  buckets (tx counts, fraud counts), keyed by day, fed by transactions and by late labels.
* ``OnlineFeatures``: customer states per partition + one terminal table; ``compute`` returns the
  feature matrix for a batch and updates the state.

The names above are all importable from this module.

Semantics (see ``fraudlite.features.spec``): events of one customer are expected in time order; a
late event (earlier than the customer's last one) is applied to the customer state as if it happened
at that last timestamp. Parity with the offline computation needs ``delay_days >= 1`` (with 0 the offline
terminal window includes same-day transactions that come later, which no stream can know). Pure numpy
+ stdlib (+ msgspec for snapshots): no torch, no pandas, no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fraudlite.errors import ConfigError, DataError
from fraudlite.features.customer_index import customer_keys
from fraudlite.features.customer_state import CustomerState
from fraudlite.features.extras import encode_extras
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec
from fraudlite.features.terminal_table import TerminalTable

__all__ = ["CustomerState", "TerminalTable", "OnlineFeatures", "customer_keys"]


class OnlineFeatures:
    """Customer states per input partition plus one global terminal table.

    Args:
        spec: the feature definition.
        terminals: a shared terminal table (default: a new one).
    """

    def __init__(self, spec: FeatureSpec, terminals: TerminalTable | None = None) -> None:
        self.spec = spec
        self.terminals = terminals if terminals is not None else TerminalTable(spec)
        self.states: dict[int, CustomerState] = {}

    def state(self, partition: int) -> CustomerState:
        """The customer state of ``partition`` (created empty on first use)."""
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = CustomerState(self.spec)
        return state

    def set_state(self, partition: int, state: CustomerState) -> None:
        """Install a restored state (e.g. on partition assignment).

        Raises:
            ConfigError: the state was built for another spec.
        """
        if state.spec != self.spec:
            raise ConfigError("customer state was built for another feature spec")
        self.states[partition] = state

    def drop_partition(self, partition: int) -> CustomerState | None:
        """Forget (and return) a partition's state, e.g. on revocation."""
        return self.states.pop(partition, None)

    @property
    def n_customers(self) -> int:
        return sum(len(s) for s in self.states.values())

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.states.values()) + self.terminals.nbytes

    def compute(
        self,
        partition: int,
        ts: np.ndarray,
        customer_ids: Sequence[str],
        terminal_ids: Sequence[str],
        amount_cents: np.ndarray,
        update_terminals: bool = False,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Features of a batch of one partition, in stream order, updating the state.

        Args:
            partition: input partition (selects the customer state).
            ts: int64 epoch seconds (floored).
            customer_ids, terminal_ids: string ids per row.
            amount_cents: int64 amounts in cents (``offline.amount_to_cents``).
            update_terminals: also count these transactions in the terminal table (when no separate
                consumer feeds it from the transactions topic).
            extras: the spec's extra columns, name -> canonical values (required when it has any).

        Returns:
            float32 (n, spec.n_features), columns in ``spec.names``.

        Raises:
            DataError: mismatched lengths or timestamps out of range.
        """
        spec = self.spec
        ts = np.asarray(ts, dtype=np.int64)
        cents = np.asarray(amount_cents, dtype=np.int64)
        n = len(ts)
        if not (len(customer_ids) == len(terminal_ids) == len(cents) == n):
            raise DataError("ts, customer_ids, terminal_ids and amount_cents must have the same length")
        out = np.empty((n, spec.n_features), dtype=np.float64)
        if n == 0:
            return out.astype(np.float32)
        amount = cents / 100.0
        out[:, 0] = amount
        out[:, 1] = np.log1p(amount)
        out[:, 2] = (ts % SECONDS_PER_DAY) // 3600 < spec.night_end_hour
        day = ts // SECONDS_PER_DAY
        out[:, 3] = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        table = self.terminals
        rows = table.rows(terminal_ids, insert=update_terminals)
        bits = table.bits(rows, terminal_ids)
        c0 = 4
        c1 = c0 + 2 * len(spec.customer_windows) + 4
        out[:, c0:c1] = self.state(partition).update(customer_keys(customer_ids), ts, cents, bits)

        # Terminal part, day by day (ascending) so counts of an earlier day in this batch are in the
        # table before a later day reads them.
        uniq = np.unique(day)
        if len(uniq) == 1:
            groups = [np.arange(n)]
        else:
            order = np.argsort(day, kind="stable")
            groups = np.split(order, np.searchsorted(day[order], uniq[1:]))
        c2 = spec.n_builtin_features
        for d, g in zip(uniq.tolist(), groups, strict=True):
            table.advance(d)
            out[g, c1:c2] = table.features(d, rows[g])
            if update_terminals:
                table._add_rows("tx", rows[g], ts[g], np.ones(len(g), dtype=np.uint32))
        if spec.extra_columns:
            if extras is None:
                raise DataError(
                    f"the feature spec has extra columns ({', '.join(spec.extra_names)}); none given"
                )
            out[:, c2:] = encode_extras(spec.extra_columns, extras, n)
        return out.astype(np.float32)
