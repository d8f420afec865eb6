"""``serve run deploy/serve/loramux.yaml`` as an operator types it: the real CLI starts a
local Ray, deploys the config and answers ``/healthz``; Ctrl-C stops it.

The config is the same machine-sized variant the in-process test uses
(:func:`config_for_this_machine`). This module runs on its own: the CLI starts its own
local Ray, so no other Ray session may be alive in this process at the same time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest
import yaml

from tests.integration.deploy.test_serve_config import READY_TIMEOUT_S
from tests.integration.deploy.test_serve_config import config_for_this_machine

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def test_serve_run_of_the_config_answers_healthz_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    from adapter_store._redis_server import RedisServerProcess
    from adapter_store._redis_server import free_port

    port = free_port()
    with RedisServerProcess(tmp_path / "redis", appendonly=False) as redis:
        config_file = tmp_path / "loramux.yaml"
        config_file.write_text(yaml.safe_dump(config_for_this_machine(tmp_path, redis.url, port)))
        serve_cli = Path(sys.executable).with_name("serve")
        env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
        log = (tmp_path / "serve-run.log").open("w+")
        proc = subprocess.Popen(
            [str(serve_cli), "run", str(config_file)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            healthy = _healthz_answers(f"http://127.0.0.1:{port}/healthz", proc)
            assert healthy, f"serve run never answered /healthz:\n{_tail(log)}"
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, f"serve run exited {proc.returncode}:\n{_tail(log)}"


def _healthz_answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def _tail(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]
