"""fraudlite.compression."""
