"""The embedded Redis: one private redis-server per data directory, shared by processes.

Policy: the first process that needs the embedded Redis of a data directory starts it
(appendonly with ``appendfsync everysec``: Redis writes each command to the append-only
file before it answers, so a restart or a crash of redis-server, SIGKILL included, keeps
every acknowledged write; only a crash of the machine itself may lose the last second,
which is not fsynced yet. ``always`` would fsync every write, the rate limiter's
included, and added 8 ms to a request's p99 here), supervises
it (a server that dies is started again on the same port and files) and records its port
in ``redis.port``; any
other process (``loramux up``, a CLI command) finds it there and connects instead of
starting a second server on the same files. Start-up is serialized by an ``flock`` on
``start.lock``. The process that started the server owns it and stops it on close.

Failure mode: a stale ``redis.port`` (the server died) is detected by a PING and replaced
by a fresh server on the same files; a server that does not start raises ``RuntimeError``
with its log tail; a start that fails or is interrupted (Ctrl-C) stops the server it
launched before the exception propagates.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
from pathlib import Path

from adapter_store._redis_server import RedisServerProcess

__all__ = ["open_embedded_redis"]


def open_embedded_redis(directory: Path) -> tuple[str, RedisServerProcess | None]:
    """The URL of the embedded Redis of ``directory``, and the server if this call
    started it (the caller then stops it when done) or ``None`` if it was running."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "redis.port"
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        port = _read_port(port_file)
        if port is not None and _answers_ping(port):
            return f"redis://127.0.0.1:{port}/0", None
        server = RedisServerProcess(directory, appendonly=True, fsync="everysec")
        try:
            server.start()
            server.supervise()
            port_file.write_text(str(server.port))
        except BaseException:
            # Failed or interrupted (Ctrl-C): the caller never gets the server to stop.
            server.stop()
            raise
        return server.url, server


def _read_port(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def _answers_ping(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn,
    ):
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")
    return False
