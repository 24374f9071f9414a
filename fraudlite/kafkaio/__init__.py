"""fraudlite.kafkaio: the Kafka base under ``pipeline`` and ``streaming``.

``clients`` (consumers, producers, admin, topics, transactional ids, broker quirks), ``security``
(``KafkaSecurity`` from a properties file or the environment), ``wire`` (message decoding and validation),
``bulk_send`` (per-partition record appends) and ``broker`` (the embedded Tansu broker). It never sees
``ServeConfig``: callers pass plain values.
"""
