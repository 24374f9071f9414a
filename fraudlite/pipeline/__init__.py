"""fraudlite.pipeline."""
