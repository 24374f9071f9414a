"""librdkafka (PyPI ``confluent-kafka``) behind the kafka-python calls the scorer makes: ``serve --kafka-client
confluent`` (``config``: settings, errors; ``consumer``; ``producer``). confluent-kafka itself is imported only
when a client is made (``require_confluent``): the serving install does not need it."""

from fraudlite.kafkaio.confluent.config import librdkafka_config, require_confluent
from fraudlite.kafkaio.confluent.consumer import PARK_LIMIT, ConfluentConsumer, Record
from fraudlite.kafkaio.confluent.producer import ConfluentProducer

__all__ = [
    "ConfluentConsumer",
    "ConfluentProducer",
    "Record",
    "PARK_LIMIT",
    "librdkafka_config",
    "require_confluent",
]
