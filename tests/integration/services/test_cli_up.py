"""``loramux up`` as a user runs it: a subprocess that serves, keeps adapters across a
restart, and shuts everything down on SIGTERM, or on Ctrl-C in the middle of start-up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.client import Client

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DEV_KEY = "lmx_dev-test-key"
ADMIN_KEY = "admin-test-key"
# Generous: the machine running the tests may be heavily loaded; never asserted on.
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 240.0

LOGS: dict[int, Path] = {}
"""Each started process's output file, by pid."""


def log_tail(process: subprocess.Popen[bytes]) -> str:
    """The end of the process's output, for assertion messages."""
    return LOGS[process.pid].read_text(errors="replace")[-3000:]


def start(home: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """``loramux up`` on ``port`` with ``options`` added, in its own process group."""
    env = {
        **os.environ,
        "HOME": str(home),
        "LORAMUX_ADMIN_KEY": ADMIN_KEY,
        "PYTHONUNBUFFERED": "1",  # its lines reach the log as they are printed
    }
    env.pop("LORAMUX_DEV_KEY", None)
    args = [
        *(sys.executable, "-c", "from services.cli import main; main()", "up"),
        *("--port", str(port), "--replicas", "1", "--dev-key", DEV_KEY),
        *options,
    ]
    log = home / f"up-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        # Its own process group, which everything it starts joins: see group_processes.
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )
    LOGS[process.pid] = log
    return process


def wait_ready(process: subprocess.Popen[bytes], url: str, profile: Path) -> None:
    """Until the API is healthy and ``up`` has written the profile (it does, once it saw
    the API healthy itself)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"loramux up exited early:\n{log_tail(process)}"
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200 and profile.exists():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"loramux up did not become ready:\n{log_tail(process)}")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def redis_answers(data_dir: Path) -> bool:
    port = int((data_dir / "redis" / "redis.port").read_text())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def group_processes(pgid: int) -> list[str]:
    """Names of the live (not zombie) processes of process group ``pgid``."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, _ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            names.append(text[text.index("(") + 1 : text.rindex(")")])
    return names


def eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``condition`` holds within ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_start_up_stops_everything_started_despite_a_second_one(
    tmp_path: Path, signum: signal.Signals
) -> None:
    from adapter_store._redis_server import free_port

    process = start(tmp_path, free_port())
    log = LOGS[process.pid]
    try:
        # Interrupt inside ray.init (which installs a SIGTERM handler of its own): Redis is up and Ray has started its first process.
        assert eventually(
            lambda: "gcs_server" in group_processes(process.pid) or process.poll() is not None,
            READY_TIMEOUT_S,
        ), log_tail(process)
        assert process.poll() is None, log_tail(process)
        assert redis_answers(tmp_path / ".loramux"), log_tail(process)
        process.send_signal(signum)
        assert eventually(
            lambda: "shutting down" in log.read_text() or process.poll() is not None,
            STOP_TIMEOUT_S,
        ), log_tail(process)
        process.send_signal(signum)  # an impatient second one
        status = process.wait(STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()

    assert status == 0, log_tail(process)
    assert f"{signum.name} during start-up: shutting down..." in log.read_text(), log_tail(process)
    assert "Traceback" not in log.read_text(), log_tail(process)
    assert not redis_answers(tmp_path / ".loramux")
    # Ray stops its processes without waiting for them to exit.
    assert eventually(lambda: not group_processes(process.pid), STOP_TIMEOUT_S), group_processes(
        process.pid
    )


def test_up_serves_keeps_adapters_across_a_restart_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    import copy

    from adapter_store._redis_server import free_port
    from services.engine import load_base_model
    from tests.factories import make_peft_adapter

    # The base model ``loramux up`` serves by default.
    tiny_en = load_base_model("tiny-en", device="cpu").model
    adapter_dir = make_peft_adapter(copy.deepcopy(tiny_en), tmp_path / "bot", seed=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    profile = tmp_path / ".loramux" / "profile.json"

    first = start(tmp_path, port)
    try:
        wait_ready(first, url, profile)
        assert json.loads(profile.read_text()) == {"url": url, "api_key": DEV_KEY}
        with Client(profile_path=profile, max_retries=0, timeout=120) as client:
            pushed = client.adapters.push(adapter_dir, "bot")
            reply = client.completions.create(model="bot", prompt="Hi", max_tokens=2)
    finally:
        first_status = stop(first)

    assert first_status == 0, log_tail(first)
    assert pushed.key == "default/bot@1" and reply.usage.completion_tokens >= 1
    assert not redis_answers(tmp_path / ".loramux")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=5)

    second = start(tmp_path, port)
    try:
        wait_ready(second, url, profile)
        with Client(url, DEV_KEY, max_retries=0, timeout=120) as client:
            kept = [adapter.name for adapter in client.adapters.list()]
    finally:
        second_status = stop(second)

    assert second_status == 0, log_tail(second)
    assert kept == ["bot"]
