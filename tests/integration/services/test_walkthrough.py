"""The README's first ten minutes, run as written: commands and outputs come from the
README itself (between ``<!-- walkthrough -->`` and ``<!-- /walkthrough -->``), so the
README cannot drift from the product.

In the README, a ``console`` block holds ``$ loramux ...`` commands, each followed by the
lines it prints; a ``python`` block is run as a script and the ``console`` block right
after it holds what it prints. ``…`` in an expected line stands for anything (times,
job ids); every other character must match, and the expected lines must appear in order.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import httpx
import pytest

from tests.integration.services.test_cli_up import ADMIN_KEY
from tests.integration.services.test_cli_up import log_tail
from tests.integration.services.test_cli_up import start
from tests.integration.services.test_cli_up import stop
from tests.integration.services.test_cli_up import wait_ready

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
COMMAND_TIMEOUT_S = 600.0


@dataclass
class Step:
    """A command line (``$ loramux ...``) or a script, and the lines it must print."""

    command: str | None = None
    script: str | None = None
    expected: list[str] = field(default_factory=list)


def walkthrough_steps(readme: str) -> list[Step]:
    section = readme.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    steps: list[Step] = []
    for language, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL):
        lines = body.rstrip("\n").split("\n")
        if language == "python":
            steps.append(Step(script=body))
        elif language == "console" and not lines[0].startswith("$ "):
            steps[-1].expected.extend(lines)  # what the script before it prints
        elif language == "console":
            for line in lines:
                if line.startswith("$ "):
                    steps.append(Step(command=line[2:]))
                else:
                    steps[-1].expected.append(line)
    return steps


def as_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("…")))


def assert_printed_in_order(expected: list[str], printed: str, what: str) -> None:
    lines = [line.rstrip() for line in printed.splitlines()]
    position = 0
    for line in expected:
        pattern = as_pattern(line.rstrip())
        while position < len(lines) and not pattern.fullmatch(lines[position]):
            position += 1
        assert position < len(lines), f"{what}: no line {line!r} in:\n{printed}"
        position += 1


def test_the_readme_parses_into_commands_with_outputs() -> None:
    steps = walkthrough_steps(README.read_text())

    commands = [s.command for s in steps if s.command]
    assert any(c.startswith("train ") or " train " in c for c in commands)
    assert sum(1 for s in steps if s.script) == 1
    assert all(s.expected for s in steps if s.script)
    assert all(c.startswith("loramux ") for c in commands)


@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_the_readme_walkthrough_runs_as_written(engine: str, tmp_path: Path) -> None:
    """The same commands print the same lines on both engines (``loramux up --engine``);
    the python block drives the service with the official ``openai`` client."""
    from adapter_store._redis_server import free_port

    steps = walkthrough_steps(README.read_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    for name in ("LORAMUX_URL", "LORAMUX_API_KEY", "LORAMUX_DIRECT"):
        env.pop(name, None)

    service = start(tmp_path, port, "--engine", engine)
    try:
        wait_ready(service, url, tmp_path / ".loramux" / "profile.json")
        for step in steps:
            if step.command is not None:
                args = shlex.split(step.command)[1:]
                argv = [sys.executable, "-c", "from services.cli import main; main()", *args]
                what = step.command
            else:
                script = tmp_path / "walkthrough.py"
                script.write_text(step.script or "")
                argv, what = [sys.executable, str(script)], "the python block"
            result = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
            )
            assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"
            assert_printed_in_order(step.expected, result.stdout, what)
        # Residency reads the same on both engines: the trained adapter holds a GPU slot.
        stats = httpx.get(
            f"{url}/v1/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ).json()
        assert [replica["engine"] for replica in stats["replicas"]] == [engine]
        assert "default/moonberry@1" in stats["replicas"][0]["residency"]["gpu"]
    finally:
        status = stop(service)
    assert status == 0, log_tail(service)
