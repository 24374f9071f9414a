"""fraudlite.models."""
