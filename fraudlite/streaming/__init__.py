"""fraudlite.streaming."""
