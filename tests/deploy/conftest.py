"""Fixtures for the deploy/ tests: the embedded broker (same as tests/streaming's ``broker``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fraudlite.streaming.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """An embedded Kafka-protocol broker for the whole session (``.bootstrap`` is ``"127.0.0.1:PORT"``)."""
    with EmbeddedBroker() as b:
        yield b
