"""End-to-end placement on a local Ray: loramux's cache-aware router against Ray Serve's
own ``@serve.multiplexed`` routing and LRU, on the same engine and slot count.

    python -m benchmarks.bench_serve_routing            # about 6 minutes on 2 cores
    python -m benchmarks.bench_serve_routing --quick    # a smoke run

Each workload is a sequence of requests over ``--adapters`` adapters drawn by the
project's trace generator (:func:`scheduler.synthesize`): stationary Zipf, and Zipf with
popularity drift and flash crowds. Each sequence runs twice on a fresh deployment of the
whole service (ingress, model replicas on the built-in ``tiny`` model, a private
redis-server, a ``file://`` blob store), with ``--concurrency`` clients sending streamed
completions in sequence order:

- ``loramux``: the service as ``loramux up`` runs it (the ``adaptive`` policy in the
  cache-aware RequestRouter);
- ``serve_multiplexed``: the same deployment with Ray Serve's default request router,
  each replica loading its requests' adapters under ``@serve.multiplexed`` with
  ``max_num_models_per_replica`` = the GPU slots: Ray's LRU decides which adapters hold
  the slots, and Ray routes by it.

Measured per run: the GPU-slot hit rate (from the replicas' engine counters: the share
of requests whose adapter was in a GPU slot when they arrived) against the pooled
Belady bound of the sequence over all slots and the hindsight top-slots reference
(``static_top``), cold loads (from the blob store), p50/p99 latency and time to first
token, throughput, requests per replica (max/mean) and errors. Then the simulator
replays each run's exact sequence, with the arrival times it had, as each router sees
the replicas (``adaptive`` for ``loramux``, ``ray_multiplex`` for
``serve_multiplexed``; see :func:`replay`): the ``fidelity`` entries are simulation
minus reality, and ``fitted_pooled_replica_gpu_hit_rate`` is the ``adaptive`` policy on
the pooled replica (all slots in one cache, :meth:`scheduler.SimConfig.pooled`) with the
run's arrivals: what placement could reach at best. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import int_options
from scheduler import CostProfile
from scheduler import SimConfig
from scheduler import SynthSpec
from scheduler import TraceRequest
from scheduler import batch_options
from scheduler import belady_bound
from scheduler import cost_profile
from scheduler import make_policy
from scheduler import percentile
from scheduler import simulate
from scheduler import synthesize
from services.client import Client

ADMIN_KEY = "bench-admin"
TENANT = "bench"
PROMPT = "Once upon a time"
READY_TIMEOUT_S = 300.0
# How often replicas report to the router; the simulator's views refresh as often.
ROUTING_STATS_PERIOD_S = 0.5
# Sequences one replica batches; the replay's profiles batch as many.
MAX_BATCH_SIZE = 8
# How each router sees the replicas, for the simulator's replay. Both read queue lengths
# from Ray's queue-length cache, which every send and completion updates (exact load).
# loramux's router follows the replicas' residency events in Redis as they happen and
# marks its own placements until the replica reports them: exact views. Ray's
# multiplexed routing knows a model id only once the replica reports it: a replica
# pushes a change every 0.1 s (PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S) and the
# controller's loop, on a 0.1 s period, forwards it to the routers.
ROUTER_VIEWS: dict[str, dict[str, Any]] = {
    "adaptive": {"view_refresh_s": 0.0},
    "ray_multiplex": {"view_refresh_s": 0.2, "exact_load": True, "optimistic_views": False},
}
# Replays of each run under other replica ids and seeds: how far chance alone (where
# adapters hash, the policies' random draws) moves the simulated figures.
SPREAD_DRAWS = 8

# The two families of sequences (popularity only: the clients send them closed-loop).
WORKLOADS: dict[str, dict[str, Any]] = {
    "zipf1.0": {"zipf_alpha": 1.0},
    "zipf0.8": {"zipf_alpha": 0.8},
    "drift-flash": {
        "zipf_alpha": 1.0,
        "drift_period_s": 5.0,
        "drift_fraction": 0.3,
        "flash_period_s": 6.0,
        "flash_duration_s": 2.0,
        "flash_intensity": 1.0,
    },
}
SYSTEMS = {"loramux": "adaptive", "serve_multiplexed": "ray_multiplex"}


@dataclass
class Sent:
    """One request as the client saw it (seconds since the run started)."""

    index: int
    adapter: str
    sent_s: float = 0.0
    first_token_s: float | None = None
    done_s: float | None = None
    prompt_tokens: int = 0
    error: str | None = None


@dataclass
class Run:
    system: str
    requests: list[Sent] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def sequence(workload: str, requests: int, adapters: int, seed: int) -> list[str]:
    """The adapter names of ``requests`` requests of ``workload``, in order."""
    spec = SynthSpec(
        adapters=adapters,
        tenants=1,
        rate_rps=50.0,
        duration_s=requests / 50.0 * 1.5,
        seed=seed,
        **WORKLOADS[workload],
    )
    trace = synthesize(spec)[:requests]
    # "tenant0000/adapter00042@1" -> "adapter00042": one tenant holds them all.
    return [request.adapter.split("/")[1].split("@")[0] for request in trace]


class _HeldByRay:
    """An adapter in ``@serve.multiplexed``'s LRU: its GPU slot stays pinned until Ray
    unloads it. Ray calls ``__del__`` on a worker thread; the adapter cache belongs to
    the replica's event loop, so the release is handed to that loop."""

    def __init__(self, lease: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._lease: Any = lease
        self._loop = loop

    def __del__(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the replica is gone
                self._loop.call_soon_threadsafe(lease.release)


def multiplexed_replica(gpu_slots: int) -> type:
    """The model replica under Ray Serve's own multiplexing: ``@serve.multiplexed``'s
    LRU of ``gpu_slots`` adapters decides which adapters hold the GPU slots (each it
    loads is pinned in the engine until Ray unloads it), and Ray's router routes by it,
    as a deployment that loads its LoRAs under ``@serve.multiplexed`` works."""
    from ray import serve

    from services.serve import ModelReplica

    class MultiplexedReplica(ModelReplica):
        @serve.multiplexed(max_num_models_per_replica=gpu_slots)
        async def _held(self, key: str) -> _HeldByRay:
            lease = await self._cache.acquire(self._arriving[key])
            return _HeldByRay(lease, asyncio.get_running_loop())

        async def generate(self, request: Any) -> AsyncIterator[Any]:
            key = serve.get_multiplexed_model_id()
            if key:
                if not hasattr(self, "_arriving"):
                    self._arriving: dict[str, Any] = {}
                self._arriving[key] = request.adapter
                await self._held(key)
            async for chunk in super().generate(request):
                yield chunk

    return MultiplexedReplica


def deploy(
    system: str, args: argparse.Namespace, root: Path, adapter_dir: Path
) -> tuple[str, str, Any, str]:
    """Start the service as ``system`` on a fresh redis-server and blob store and push
    every adapter (the same files under each name: each is its own cache entry). Returns
    the URL, the tenant's key, the redis-server and the Serve application's name."""
    from ray import serve

    from adapter_store import StoreSettings
    from adapter_store._redis_server import RedisServerProcess
    from services._settings import LimitSettings
    from services._settings import ServiceSettings
    from services.serve import build_app

    redis = RedisServerProcess(root / "redis", appendonly=False)
    redis.start()
    os.environ["LORAMUX_REDIS_URL"] = redis.url
    settings = ServiceSettings(
        store=StoreSettings(
            redis_url=redis.url, blob_url=(root / "blobs").as_uri(), data_dir=root / "data"
        ),
        models_dir=args.models_dir,
        replicas=args.replicas,
        num_cpus=0.25,
        ingress_num_cpus=0.25,
        num_gpus=0,
        torch_threads=1,
        gpu_slots=args.gpu_slots,
        max_batch_size=MAX_BATCH_SIZE,
        default_max_tokens=args.max_tokens,
        routing_stats_period_s=ROUTING_STATS_PERIOD_S,
        stats_period_s=0.5,
        admin_key=ADMIN_KEY,
        routing_policy="adaptive",
        # Placement is measured, not admission: the default 50 requests/s per tenant
        # would refuse a third of the sequence on an idle machine.
        limits=LimitSettings(
            tenant_requests_per_s=None, tenant_tokens_per_min=None, tenant_max_in_flight=None
        ),
    )
    if system == "loramux":
        app = build_app(settings)
    else:
        app = build_app(
            settings,
            model_class=multiplexed_replica(args.gpu_slots),
            cache_aware_routing=False,
        )
    serve.run(app, name=settings.app_name, route_prefix="/")
    url = f"http://127.0.0.1:{args.port}"
    _wait(lambda: httpx.get(f"{url}/healthz").status_code == 200)
    with Client(url, ADMIN_KEY, max_retries=0) as admin:
        key = admin.tenants.create(TENANT).api_key
    with Client(url, key, max_retries=0, timeout=120) as client:
        for index in range(args.adapters):
            client.adapters.push(adapter_dir, f"adapter{index:05d}")
    return url, key, redis, settings.app_name


def drive(url: str, key: str, names: list[str], args: argparse.Namespace) -> list[Sent]:
    """Send every request in order from ``args.concurrency`` closed-loop clients."""
    sent = [Sent(index, name) for index, name in enumerate(names)]
    cursor = iter(sent)
    lock = threading.Lock()
    start = time.perf_counter()

    def client_loop() -> None:
        with Client(url, key, max_retries=0, timeout=120) as client:
            while True:
                with lock:
                    request = next(cursor, None)
                if request is None:
                    return
                request.sent_s = time.perf_counter() - start
                try:
                    stream = client.completions.create(
                        model=request.adapter,
                        prompt=PROMPT,
                        max_tokens=args.max_tokens,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    for chunk in stream:
                        if chunk.choices and request.first_token_s is None:
                            request.first_token_s = time.perf_counter() - start
                        if chunk.usage is not None:
                            request.prompt_tokens = chunk.usage.prompt_tokens
                    request.done_s = time.perf_counter() - start
                except Exception as exc:  # counted, never retried
                    request.error = f"{type(exc).__name__}: {exc}"[:200]

    threads = [threading.Thread(target=client_loop) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent


def replica_stats(url: str, served: int) -> list[dict[str, Any]]:
    """The replicas' reports once they count every answered request."""

    def read() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return httpx.get(f"{url}/v1/stats", headers=headers).json()["replicas"]

    _wait(lambda: sum(r.get("requests_served") or 0 for r in read()) >= served)
    return read()


def summarize(run: Run, bound: float, slots: int) -> dict[str, Any]:
    ok = [r for r in run.requests if r.error is None and r.done_s is not None]
    latency = [r.done_s - r.sent_s for r in ok]  # type: ignore[operator]
    ttft = [r.first_token_s - r.sent_s for r in ok if r.first_token_s is not None]
    replicas = run.stats["replicas"]
    served = [r["requests_served"] for r in replicas]
    # Every GPU-slot miss is a request that found its adapter out of the slots (under
    # @serve.multiplexed the miss is counted when Ray's LRU loads the adapter, and the
    # request's own lookup then hits), so the rate is taken over the requests.
    misses = sum(r["tiers"]["gpu"]["misses"] for r in replicas)
    cold = sum((r.get("loads") or {}).get("from_none", {}).get("count", 0) for r in replicas)
    hit_rate = 1.0 - misses / sum(served)
    return {
        "gpu_hit_rate": round(hit_rate, 3),
        "hit_over_bound": round(hit_rate / bound, 3) if bound else None,
        "cold_loads": cold,
        "latency_p50_s": round(percentile(latency, 50), 3),
        "latency_p99_s": round(percentile(latency, 99), 3),
        "ttft_p50_s": round(percentile(ttft, 50), 3),
        "ttft_p99_s": round(percentile(ttft, 99), 3),
        "throughput_rps": round(len(ok) / run.wall_s, 2),
        "requests_per_replica": sorted(served, reverse=True),
        "imbalance": round(max(served) / statistics.mean(served), 3),
        "errors": len(run.requests) - len(ok),
        "first_errors": [r.error for r in run.requests if r.error][:3],
        "gpu_slots_total": slots,
    }


def replay(run: Run, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    """The simulator on the run's exact sequence and arrival times, its router views
    kept as the real router keeps them (:data:`ROUTER_VIEWS`): under the ``cpu``
    profile (the engine alone), ``cpu-serve`` (the same, end to end on a loaded 2-core
    machine) and ``fitted``: ``cpu`` with the step factor that gives this run's median
    latency (``fit_step_scale``), against which fidelity is judged. The factor is fitted
    on latency alone, so the hit rate and imbalance compared are not fitted."""
    trace = [
        TraceRequest(
            arrival_s=r.sent_s,
            adapter=r.adapter,
            prompt_tokens=max(1, r.prompt_tokens),
            output_tokens=args.max_tokens,
            rank=8,
            tenant=TENANT,
        )
        for r in sorted(run.requests, key=lambda r: r.sent_s)
    ]
    measured = [r.done_s - r.sent_s for r in run.requests if r.done_s is not None]
    engine_only = dataclasses.replace(cost_profile("cpu"), max_batch=MAX_BATCH_SIZE)
    # The run's replica ids (in the replicas' report order) and seed 0, the services
    # router's: every adapter gets the rendezvous homes it had for real.
    ids = tuple(replica["replica_id"] for replica in run.stats.get("replicas", ()))
    config = SimConfig(
        replicas=args.replicas,
        gpu_slots=args.gpu_slots,
        profile=engine_only,
        replica_ids=ids if len(ids) == args.replicas else (),
        **ROUTER_VIEWS[policy],
    )
    scale = fit_step_scale(trace, policy, config, percentile(measured, 50))
    report: dict[str, Any] = {"policy": policy, "fitted_step_factor": round(scale, 1)}
    profiles = {
        "cpu": engine_only,
        "cpu-serve": dataclasses.replace(cost_profile("cpu-serve"), max_batch=MAX_BATCH_SIZE),
        "fitted": scaled(engine_only, scale),
    }
    for name, profile in profiles.items():
        result = _simulate(trace, policy, dataclasses.replace(config, profile=profile))
        report[name] = {
            "gpu_hit_rate": round(result.gpu_hit_rate, 3),
            "imbalance": round(_imbalance(result, args.replicas), 3),
            "latency_p50_s": round(result.latency_p50_s, 3),
        }
    # The pooled replica (all slots in one cache, same pins and eviction): what the
    # adaptive policy's placement could reach at best on this run's arrivals.
    fitted = dataclasses.replace(config, profile=profiles["fitted"])
    pooled = _simulate(trace, "adaptive", fitted.pooled())
    report["fitted_pooled_replica_gpu_hit_rate"] = round(pooled.gpu_hit_rate, 3)
    # The same replay with other replica ids and seeds (other rendezvous homes and random
    # choices, as another deployment would draw): how far the figures move by chance.
    others = [
        _simulate(
            trace,
            policy,
            dataclasses.replace(
                fitted, replica_ids=tuple(f"draw{draw}-{i}" for i in range(args.replicas))
            ),
            seed=draw,
        )
        for draw in range(1, SPREAD_DRAWS + 1)
    ]
    report["fitted_other_draws"] = {
        "gpu_hit_rate_mean_sd": _mean_sd([r.gpu_hit_rate for r in others]),
        "imbalance_mean_sd": _mean_sd([_imbalance(r, args.replicas) for r in others]),
    }
    return report


def _imbalance(result: Any, replicas: int) -> float:
    """Requests per replica, max over mean."""
    counts = [0] * replicas
    for outcome in result.outcomes:
        counts[outcome.replica] += 1
    return max(counts) / statistics.mean(counts)


def _mean_sd(values: list[float]) -> list[float]:
    return [round(statistics.mean(values), 3), round(statistics.stdev(values), 3)]


def scaled(profile: CostProfile, factor: float) -> CostProfile:
    """``profile`` with every batch-step cost multiplied by ``factor`` (``cpu-serve`` is
    ``cpu`` scaled so)."""
    return dataclasses.replace(
        profile,
        name=f"{profile.name}x{factor:.1f}",
        step_base_s=profile.step_base_s * factor,
        step_per_seq_s=profile.step_per_seq_s * factor,
        prefill_per_token_s=profile.prefill_per_token_s * factor,
    )


def fit_step_scale(
    trace: list[TraceRequest], policy: str, config: SimConfig, latency_p50_s: float
) -> float:
    """The factor on ``config.profile``'s step costs that gives the measured median
    latency.

    End to end, a step of this engine costs far more than on the engine alone: the
    replicas, the ingress and the proxy share two cores, and each request crosses HTTP,
    Redis and Ray. Bisection on the logarithm (the latency grows with the factor)."""
    low, high = 1.0, 1000.0
    for _ in range(24):
        middle = (low * high) ** 0.5
        trial = dataclasses.replace(config, profile=scaled(config.profile, middle))
        simulated = _simulate(trace, policy, trial).latency_p50_s
        low, high = (middle, high) if simulated < latency_p50_s else (low, middle)
    return (low * high) ** 0.5


def _simulate(trace: list[TraceRequest], policy: str, config: SimConfig, *, seed: int = 0) -> Any:
    # The policy as the services router builds it (seed 0, holders up to a full batch).
    options = batch_options(policy, MAX_BATCH_SIZE)
    return simulate(trace, make_policy(policy, seed=seed, **options), config)


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the service did not get ready")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every workload on both systems; the raw runs, as :func:`evaluate` reads them."""
    import ray
    from ray import serve

    from adapter_store._redis_server import free_port
    from services.engine import load_base_model
    from tests.factories import make_peft_adapter

    root = Path(tempfile.mkdtemp(prefix="bench-serve-routing-"))
    args.models_dir = root / "models"
    tiny = copy.deepcopy(load_base_model("tiny", models_dir=args.models_dir, device="cpu").model)
    adapter_dir = make_peft_adapter(tiny, root / "adapter", seed=1, r=8, lora_alpha=16)
    args.port = free_port()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    raw: dict[str, Any] = {}
    try:
        for workload in args.workloads:
            names = sequence(workload, args.requests, args.adapters, args.seed)
            for system in SYSTEMS:
                url, key, redis, app_name = deploy(
                    system, args, root / f"{workload}-{system}", adapter_dir
                )
                try:
                    started = time.perf_counter()
                    run = Run(system, drive(url, key, names, args))
                    run.wall_s = time.perf_counter() - started
                    answered = sum(1 for r in run.requests if r.error is None)
                    run.stats = {"replicas": replica_stats(url, answered)}
                finally:
                    serve.delete(app_name)
                    redis.stop()
                raw.setdefault(workload, {})[system] = dataclasses.asdict(run)
    finally:
        serve.shutdown()
        ray.shutdown()
    return raw


def static_top_hit_rate(names: list[str], slots: int) -> float:
    """The hit rate of holding the sequence's ``slots`` most requested adapters from
    their first request on, chosen in hindsight: what a frequency policy that knew the
    popularity from the start would reach on a stationary workload (each other request,
    and each first request, misses). A reference below the Belady bound, not a bound."""
    counts = sorted(Counter(names).values(), reverse=True)
    return sum(count - 1 for count in counts[:slots]) / len(names) if names else 1.0


def evaluate(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The report: each run's figures, the simulator's replay of it, and the difference."""
    slots = args.replicas * args.gpu_slots
    workloads: dict[str, Any] = {}
    for workload, systems in raw.items():
        names = [r["adapter"] for r in systems["loramux"]["requests"]]
        bound = belady_bound(names, slots).hit_rate
        entry: dict[str, Any] = {
            "bound": round(bound, 3),
            "static_top": round(static_top_hit_rate(names, slots), 3),
            "distinct_adapters": len(set(names)),
        }
        for system, sim_policy in SYSTEMS.items():
            run = Run(
                system,
                [Sent(**r) for r in systems[system]["requests"]],
                systems[system]["stats"],
                systems[system]["wall_s"],
            )
            real = summarize(run, bound, slots)
            simulated = replay(run, sim_policy, args)
            entry[system] = real
            entry[f"{system}_sim"] = simulated
            fitted = simulated["fitted"]
            entry[f"{system}_fidelity"] = {
                "hit_rate_sim_minus_real": round(fitted["gpu_hit_rate"] - real["gpu_hit_rate"], 3),
                "imbalance_sim_minus_real": round(fitted["imbalance"] - real["imbalance"], 3),
            }
        workloads[workload] = entry
    return workloads


def main() -> None:
    parser = int_options(
        __doc__,
        requests=1000,
        adapters=100,
        replicas=4,
        gpu_slots=4,
        concurrency=16,
        max_tokens=8,
        seed=1,
    )
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="100 requests, 20 adapters")
    parser.add_argument("--save", type=Path, help="write the raw runs here (JSON)")
    parser.add_argument(
        "--replay", type=Path, help="evaluate the raw runs saved here instead of running"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.adapters, args.workloads = 100, 20, ["zipf1.0"]
    if args.replay is not None:
        saved = json.loads(args.replay.read_text())
        vars(args).update(saved["config"])
        raw = saved["runs"]
    else:
        # Ray prints its own notices (a raylet's warning at shutdown) to stdout, which
        # carries the report alone.
        with contextlib.redirect_stdout(sys.stderr):
            raw = run_all(args)
    config = {
        key: value
        for key, value in vars(args).items()
        if key in ("requests", "adapters", "replicas", "gpu_slots", "concurrency", "max_tokens")
        or key in ("seed", "workloads")
    }
    if args.save is not None:
        args.save.write_text(json.dumps({"config": config, "runs": raw}))
    print(json.dumps({"config": config, "workloads": evaluate(raw, args)}, indent=1))


if __name__ == "__main__":
    main()
