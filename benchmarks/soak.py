"""Soak benchmark: ``loramux up`` under steady mixed traffic; does memory stay flat?

Starts ``loramux up`` (2 replicas of 4 GPU slots, the built-in ``tiny`` model, its own
data directory and a free port), pushes ``--adapters`` PEFT adapters made locally, then
drives ``--clients`` closed-loop clients for ``--minutes``: Zipf-distributed adapters,
a mix of completions and chat, streamed or not, and a share of base-model requests.
Every ``--sample-s`` it reads the RSS of each process ``loramux up`` started (found by
walking its process tree and named from the command line: the Ray Serve replicas by
deployment, ``ServeController``, ``ProxyActor``, ``raylet``, ``gcs_server``, the
dashboard, redis-server, the driver itself).

Prints one JSON object:

- ``processes``: per process, RSS at the end of the warm-up and at the end, and the
  least-squares slope of RSS against requests completed after ``--warmup-minutes``, in
  KB per 1,000 requests (goal: < 50 for every loramux process);
- ``minutes``: per minute, requests, errors, latency p50/p99 in ms;
- ``p99_end_vs_minute_3``: the last full minute's p99 over minute 3's (goal: <= 1.2);
- ``errors``: the total and the first few messages (goal: 0);
- ``tracemalloc`` (with ``--tracemalloc SECONDS``): per replica of
  ``--trace-deployment`` (default ``Ingress``), the allocation sites that grew most
  between the end of the warm-up and the end, from snapshots its own process took. The
  hook is a ``sitecustomize`` module this script writes into a temporary directory and
  puts on ``PYTHONPATH``; it starts tracing in the processes whose title names that
  deployment, so only they pay the cost (tracing inflates their RSS: read the slopes
  from a run without it).

Run (from the repository root): ``python -m benchmarks.soak --minutes 10``. Nothing is
downloaded. Everything it starts is stopped at the end (SIGINT to ``loramux up``, then
its process group is killed if it lingers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import httpx

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_UP_COMMAND = "from services.cli import main; main()"

# Written into a temporary directory on PYTHONPATH when --tracemalloc is given: Python
# imports it at start-up in every process of the service; it waits for its process to
# become a replica of the traced deployment (Ray sets the title when the actor starts),
# then dumps a snapshot every interval.
_SITECUSTOMIZE = textwrap.dedent(
    """
    import os, threading, time

    def _trace(directory, deployment, interval_s):
        while True:
            time.sleep(1.0)
            try:
                with open("/proc/self/cmdline", "rb") as f:
                    title = f.read()
            except OSError:
                return
            if b"ServeReplica" in title and deployment.encode() in title:
                break
        import tracemalloc
        tracemalloc.start(10)
        for n in range(1_000_000):
            time.sleep(interval_s)
            path = os.path.join(directory, "%d-%04d.snap" % (os.getpid(), n))
            tracemalloc.take_snapshot().dump(path + ".part")
            os.replace(path + ".part", path)

    _dir = os.environ.get("LORAMUX_SOAK_TRACEMALLOC_DIR")
    if _dir:
        threading.Thread(
            target=_trace,
            args=(
                _dir,
                os.environ["LORAMUX_SOAK_TRACE_DEPLOYMENT"],
                float(os.environ["LORAMUX_SOAK_TRACEMALLOC_S"]),
            ),
            daemon=True,
        ).start()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(root: int) -> list[int]:
    children = _children()
    found, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _role(pid: int, root: int) -> str | None:
    """A readable name for a process of the service, None for ones not worth tracking."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if pid == root:
        return "loramux-up"
    if "ServeReplica" in cmdline:
        # ray::ServeReplica:<app>:<deployment>
        return "serve:" + cmdline.split()[0].split(":")[-1]
    for name in ("ServeController", "ProxyActor"):
        if name in cmdline:
            return f"serve:{name}"
    for name in ("raylet", "gcs_server", "redis-server", "log_monitor", "monitor.py"):
        if name in cmdline:
            return f"ray:{name}" if name != "redis-server" else "redis-server"
    if "dashboard/agent.py" in cmdline or "dashboard_agent" in cmdline:
        return "ray:dashboard_agent"
    if "runtime_env/agent" in cmdline:
        return "ray:runtime_env_agent"
    if "dashboard.py" in cmdline or "ray::Dashboard" in cmdline:
        return "ray:dashboard"
    if cmdline.startswith("ray::"):
        return "ray:" + cmdline.split()[0][len("ray::") :]
    return None


def _rss_kb(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class _Series:
    role: str
    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, requests, KB


class _Sampler:
    """RSS of every process under ``root``, sampled against the request count."""

    def __init__(self, root: int) -> None:
        self._root = root
        self.series: dict[int, _Series] = {}

    def sample(self, t: float, requests: int) -> None:
        for pid in _descendants(self._root):
            series = self.series.get(pid)
            if series is None:
                role = _role(pid, self._root)
                if role is None:
                    continue
                series = self.series[pid] = _Series(role, pid)
            rss = _rss_kb(pid)
            if rss is not None:
                series.samples.append((t, requests, rss))

    def report(self, warmup_s: float) -> list[dict[str, Any]]:
        rows = []
        for series in sorted(self.series.values(), key=lambda s: (s.role, s.pid)):
            after = [s for s in series.samples if s[0] >= warmup_s]
            row: dict[str, Any] = {"process": series.role, "pid": series.pid}
            if len(after) >= 3 and after[-1][1] > after[0][1]:
                row.update(
                    rss_mb_at_warmup=round(after[0][2] / 1024, 1),
                    rss_mb_at_end=round(after[-1][2] / 1024, 1),
                    kb_per_1000_requests=round(
                        1000 * _slope([s[1] for s in after], [s[2] for s in after]), 1
                    ),
                    kb_per_minute=round(
                        60 * _slope([s[0] for s in after], [s[2] for s in after]), 1
                    ),
                )
            else:
                row["note"] = "not alive over the measured window"
            rows.append(row)
        return rows


def _slope(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


# --------------------------------------------------------------------------- service


@contextlib.contextmanager
def _service(args: argparse.Namespace, root: Path, env: dict[str, str]) -> Iterator[Any]:
    """``loramux up`` in its own process group; yields (process, url, dev key)."""
    port = _free_port()
    dev_key = "lmx_soak" + secrets.token_urlsafe(16)
    command = [
        sys.executable,
        "-c",
        _UP_COMMAND,
        "up",
        "--port",
        str(port),
        "--data-dir",
        str(root / "data"),
        "--replicas",
        str(args.replicas),
        "--gpu-slots",
        str(args.gpu_slots),
        # The model its adapters are made for (``loramux up`` serves tiny-en by default).
        "--base-model",
        "tiny",
        "--dev-key",
        dev_key,
        "--ready-timeout",
        "600",
    ]
    log = (root / "up.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while "loramux is up" not in (root / "up.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loramux up did not start; see {root / 'up.log'}")
            time.sleep(1.0)
        yield process, url, dev_key
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=90)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _push_adapters(url: str, key: str, count: int, workdir: Path) -> list[str]:
    """Make ``count`` PEFT adapters for ``tiny`` (ranks 4-16) and push them; their names."""
    from services.client import Client
    from services.engine import load_base_model
    from tests.factories import make_peft_adapter

    base = load_base_model("tiny", models_dir=workdir / "models", device="cpu").model
    names = []
    with Client(base_url=url, api_key=key, timeout=120) as client:
        for i in range(count):
            name = f"soak-{i:03d}"
            rank = (4, 8, 16)[i % 3]
            path = make_peft_adapter(base, workdir / "adapters" / name, seed=i, r=rank)
            client.adapters.push(path, name)
            names.append(name)
    return names


# --------------------------------------------------------------------------- traffic


@dataclass
class _Result:
    done_at: float
    latency_s: float
    error: str | None


class _Traffic:
    """Closed-loop clients: each sends its next request when the last one ends."""

    def __init__(self, args: argparse.Namespace, url: str, key: str, names: list[str]) -> None:
        self._args = args
        self._url = url
        self._key = key
        self._names = names
        weights = [1.0 / (rank + 1) ** args.zipf for rank in range(len(names))]
        self._cumulative = list(_accumulate(weights))
        self.results: list[_Result] = []
        self.started = 0.0
        self.started_wall = 0.0

    def _pick(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        model = (
            "tiny"
            if rng.random() < self._args.base_share
            else rng.choices(self._names, cum_weights=self._cumulative)[0]
        )
        max_tokens = rng.randint(4, 16)
        stream = rng.random() < 0.3
        if rng.random() < 0.25:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"hello {rng.randint(0, 999)}"}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
            return "/v1/chat/completions", body
        prompt = "the quick brown fox " * rng.randint(1, 4)
        return "/v1/completions", {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "stream": stream,
        }

    async def _client(self, index: int, until: float) -> None:
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {self._key}"}
        async with httpx.AsyncClient(base_url=self._url, headers=headers, timeout=60) as http:
            while time.monotonic() < until:
                path, body = self._pick(rng)
                start = time.monotonic()
                error = None
                try:
                    if body["stream"]:
                        async with http.stream("POST", path, json=body) as response:
                            async for _ in response.aiter_lines():
                                pass
                    else:
                        response = await http.post(path, json=body)
                    if response.status_code != 200:
                        error = f"{path} {body['model']}: HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    error = f"{path} {body['model']}: {type(exc).__name__}: {exc}"
                end = time.monotonic()
                self.results.append(_Result(end - self.started, end - start, error))

    async def run(self, sampler: _Sampler) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        until = self.started + self._args.minutes * 60
        clients = [asyncio.create_task(self._client(i, until)) for i in range(self._args.clients)]
        while time.monotonic() < until:
            # /proc reads are quick; run them off the loop anyway so clients keep going.
            await asyncio.to_thread(
                sampler.sample, time.monotonic() - self.started, len(self.results)
            )
            await asyncio.sleep(self._args.sample_s)
        await asyncio.gather(*clients)
        sampler.sample(time.monotonic() - self.started, len(self.results))

    def per_minute(self) -> list[dict[str, Any]]:
        rows = []
        for minute in range(int(self._args.minutes)):
            window = [r for r in self.results if minute * 60 <= r.done_at < (minute + 1) * 60]
            ok = sorted(r.latency_s for r in window if r.error is None)
            rows.append(
                {
                    "minute": minute + 1,
                    "requests": len(window),
                    "errors": sum(r.error is not None for r in window),
                    "p50_ms": round(_percentile(ok, 0.50) * 1000, 1) if ok else None,
                    "p99_ms": round(_percentile(ok, 0.99) * 1000, 1) if ok else None,
                }
            )
        return rows


def _accumulate(weights: list[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --------------------------------------------------------------------------- tracemalloc


def _tracemalloc_growth(directory: Path, warm_at: float) -> dict[str, Any]:
    """Per traced process, the allocation sites that grew most between the first
    snapshot taken after ``warm_at`` (Unix seconds) and the last one."""
    pids = sorted({snap.name.split("-")[0] for snap in directory.glob("*.snap")})
    return {pid: _growth(sorted(directory.glob(f"{pid}-*.snap")), warm_at) for pid in pids}


def _growth(snaps: list[Path], warm_at: float) -> dict[str, Any]:
    import tracemalloc

    warm = [snap for snap in snaps if snap.stat().st_mtime >= warm_at]
    if len(warm) < 2:
        return {"note": f"{len(warm)} snapshots after the warm-up"}
    first, last = warm[0], warm[-1]
    before = tracemalloc.Snapshot.load(str(first))
    after = tracemalloc.Snapshot.load(str(last))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    top = []
    for stat in diff[:15]:
        top.append(
            {
                "size_diff_kb": round(stat.size_diff / 1024, 1),
                "count_diff": stat.count_diff,
                "traceback": [f"{f.filename}:{f.lineno}" for f in stat.traceback][-6:],
            }
        )
    seconds = round(last.stat().st_mtime - first.stat().st_mtime)
    return {"snapshots": [first.name, last.name], "seconds_apart": seconds, "top": top}


# --------------------------------------------------------------------------- main


def _summary(minutes: list[dict[str, Any]]) -> float | None:
    full = [m for m in minutes if m["p99_ms"] is not None]
    if len(full) < 4:
        return None
    return round(full[-1]["p99_ms"] / full[2]["p99_ms"], 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--base-share", type=float, default=0.05)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--gpu-slots", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument(
        "--tracemalloc",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="snapshot the traced deployment's allocations every SECONDS (0: off)",
    )
    parser.add_argument("--trace-deployment", default="Ingress")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work dir here")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            root = args.keep
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loramux-soak-")))
        env = dict(os.environ, LORAMUX_DATA_DIR=str(root / "data"))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path.cwd()), env.get("PYTHONPATH", "")) if p
        )
        traces = root / "tracemalloc"
        if args.tracemalloc > 0:
            hook = root / "hook"
            hook.mkdir(exist_ok=True)
            (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
            traces.mkdir(exist_ok=True)
            env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
            env["LORAMUX_SOAK_TRACEMALLOC_DIR"] = str(traces)
            env["LORAMUX_SOAK_TRACEMALLOC_S"] = str(args.tracemalloc)
            env["LORAMUX_SOAK_TRACE_DEPLOYMENT"] = args.trace_deployment
        # The profile `loramux up` writes goes under the work dir, not the user's home.
        env["HOME"] = str(root / "home")
        started = time.monotonic()
        process, url, key = stack.enter_context(_service(args, root, env))
        startup_s = time.monotonic() - started
        names = _push_adapters(url, key, args.adapters, root)
        sampler = _Sampler(process.pid)
        traffic = _Traffic(args, url, key, names)
        asyncio.run(traffic.run(sampler))
        warmup_s = args.warmup_minutes * 60
        errors = [r.error for r in traffic.results if r.error is not None]
        minutes = traffic.per_minute()
        report: dict[str, Any] = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "startup_s": round(startup_s, 1),
            "requests": len(traffic.results),
            "requests_per_s": round(len(traffic.results) / (args.minutes * 60), 1),
            "errors": {"count": len(errors), "first": errors[:5]},
            "processes": sampler.report(warmup_s),
            "minutes": minutes,
            "p99_end_vs_minute_3": _summary(minutes),
        }
        if args.tracemalloc > 0:
            report["tracemalloc"] = _tracemalloc_growth(traces, traffic.started_wall + warmup_s)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
