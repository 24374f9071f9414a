"""fraudlite: transaction-fraud detection with compressed models, served from Kafka."""

__version__ = "0.1.0"
__all__ = ["__version__"]
