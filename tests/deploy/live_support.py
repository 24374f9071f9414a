"""Processes of the live deploy test: ``fraudlite`` subprocesses, HTTP gets, waiting, a poison producer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest


class Proc:
    """A subprocess with its output in a log file; ``stop()`` sends SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.log = log_dir / f"{name}.log"
        self._fh = self.log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            cmd, stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        self._fh.flush()
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._fh.close()


def fraudlite(*args: str) -> list[str]:
    return [sys.executable, "-m", "fraudlite", *args]


def run_checked(cmd: list[str], what: str, timeout: float = 300) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_for(predicate, timeout_s: float, what: str, procs: list[Proc] = (), interval_s: float = 0.5):
    """Poll ``predicate()`` until it returns a truthy value; fail with the processes' log tails."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                pytest.fail(f"{p.name} exited while waiting for {what}\n{p.tail()}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_error = e
        time.sleep(interval_s)
    tails = "\n".join(p.tail() for p in procs)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last_error!r})\n{tails}")


class PoisonProducer(threading.Thread):
    """Sends invalid transaction messages at ``rate`` per second until stopped (``rate`` can change)."""

    SAMPLES = (b"{not json", b'{"tx_id": "p1"}', b"[1, 2, 3]", b'{"tx_id":"p2","timestamp":"x",'
               b'"customer_id":"c","terminal_id":"t","amount":-5}')  # fmt: skip

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True, name="poison")
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="fraudlite-tests-poison")
        self.topic = topic
        self.rate = rate
        self.sent = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            value = self.SAMPLES[self.sent % len(self.SAMPLES)]
            self.producer.send(self.topic, key=f"poison-{self.sent % 7}".encode(), value=value)
            self.sent += 1
            self.stopped.wait(1.0 / self.rate)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        self.producer.close(timeout=5)
