"""Features: one FeatureSpec, computed offline (vectorized) and online (incremental state).

Only the spec is imported here so the serving path stays light; import ``fraudlite.features.offline``
or ``fraudlite.features.online`` explicitly.
"""

from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec, terminal_bit

__all__ = ["FeatureSpec", "terminal_bit", "SECONDS_PER_DAY"]
