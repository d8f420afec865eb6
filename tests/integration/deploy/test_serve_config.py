"""The Serve config of deploy/ deployed the way ``serve run``/``serve deploy`` do, and the
metrics it exports on Ray's Prometheus endpoint after real traffic.

One module-scoped session: a local Ray, Serve's proxy on a free port, a private
redis-server and a ``file://`` blob store. The config is the file in deploy/, with only
what a CPU test machine needs changed: the endpoints and keys in its
``runtime_env.env_vars`` (as an operator's environment would set them), the built-in
``tiny`` model instead of a mounted one, engine ``hf`` instead of ``vllm`` (no vLLM
here), no GPUs and one small replica per deployment.
It is validated as Ray's ``ServeDeploySchema`` and applied through Serve's controller,
the path ``serve run CONFIG`` takes; test_serve_run_cli.py runs the CLI itself.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.api._metrics import exported_names
from services.client import Client
from tests.helpers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
SERVE_CONFIG = ROOT / "deploy" / "serve" / "loramux.yaml"
ADMIN_KEY = "admin-deploy-test-key"
# The machine may be heavily loaded: generous waits, never asserted on.
READY_TIMEOUT_S = 300.0
# Ray exports recorded metrics every few seconds (10 s by default).
METRICS_TIMEOUT_S = 120.0


@dataclass
class Deployed:
    url: str
    metrics_url: str
    adapter_dir: Path


def config_for_this_machine(root: Path, redis_url: str, port: int) -> dict[str, Any]:
    """deploy/serve/loramux.yaml, made to run on this machine (see the module docstring)."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config = copy.deepcopy(config)
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    app["runtime_env"]["env_vars"].update(
        LORAMUX_REDIS_URL=redis_url,
        LORAMUX_BLOB_URL=(root / "blobs").as_uri(),
        LORAMUX_DATA_DIR=str(root / "data"),
        LORAMUX_BASE_MODEL="tiny",
        LORAMUX_ADMIN_KEY=ADMIN_KEY,
    )
    args = app["args"]
    del args["base_model_dir"]
    args.update(
        engine="hf",
        models_dir=str(root / "models"),
        replicas=1,
        gpu_slots=2,
        host_budget_bytes=64 << 20,
        max_batch_size=4,
        default_max_tokens=4,
        torch_threads=1,
        stats_period_s=0.5,
        routing_stats_period_s=0.5,
    )
    deployments = {d["name"]: d for d in app["deployments"]}
    model = deployments["Model"]
    model["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
    model["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
    deployments["Ingress"].update(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    return config


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    import ray
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    from adapter_store._redis_server import RedisServerProcess
    from adapter_store._redis_server import free_port
    from services.engine import load_base_model
    from tests.factories import make_peft_adapter

    root = tmp_path_factory.mktemp("deploy")
    tiny = copy.deepcopy(load_base_model("tiny", models_dir=root / "models", device="cpu").model)
    adapter_dir = make_peft_adapter(tiny, root / "support", seed=1, r=4, lora_alpha=8)
    redis = RedisServerProcess(root / "redis", appendonly=False)
    redis.start()
    port = free_port()
    config = ServeDeploySchema.model_validate(config_for_this_machine(root, redis.url, port))
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        client = serve_start(
            http_options=config.http_options.model_dump(), proxy_location=config.proxy_location
        )
        client.deploy_apps(config)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, READY_TIMEOUT_S)
        metrics_port = context.address_info["metrics_export_port"]
        yield Deployed(url, f"http://127.0.0.1:{metrics_port}/metrics", adapter_dir)
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.stop()


def test_the_config_serves_and_answers_healthz(deployed: Deployed) -> None:
    health = httpx.get(f"{deployed.url}/healthz", timeout=30).json()
    assert health == {"status": "ok", "replicas": 1, "expected_replicas": 1}


def _series(text: str) -> dict[str, list[str]]:
    """Prometheus exposition text: metric name -> its sample lines."""
    series: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", line)
        if match and not line.startswith("#"):
            series.setdefault(match.group(1), []).append(line)
    return series


def test_traffic_shows_up_on_rays_metrics_endpoint(deployed: Deployed) -> None:
    with Client(deployed.url, ADMIN_KEY, max_retries=0) as admin:
        key = admin.tenants.create("acme").api_key
    with Client(deployed.url, key, max_retries=0) as acme:
        acme.adapters.push(deployed.adapter_dir, "support")
        for _ in range(2):
            acme.completions.create(model="support", prompt="Hello", max_tokens=2)
        acme.completions.create(model="tiny", prompt="Hello", max_tokens=2)

    wanted = {
        "ray_loramux_requests_total": 'outcome="ok"',
        "ray_loramux_prompt_tokens_total": 'tenant="acme"',
        "ray_loramux_pushed_bytes_total": 'deployment="Ingress"',
        "ray_loramux_cache_lookups_total": 'tier="gpu"',
        "ray_loramux_adapter_load_seconds_bucket": 'source="store"',
        "ray_loramux_resident_adapters": 'deployment="Model"',
        "ray_loramux_queued_requests": 'application="loramux"',
        "ray_loramux_routing_decisions_total": 'decision="cold"',
    }
    found: dict[str, list[str]] = {}

    # Every routing decision the traffic made, not only the first one Ray exported.
    decided = ('decision="resident"', 'decision="base"')

    def exported() -> bool:
        found.update(_series(httpx.get(deployed.metrics_url, timeout=30).text))
        decisions = " ".join(found.get("ray_loramux_routing_decisions_total", ()))
        return all(
            any(label in s for s in found.get(name, ())) for name, label in wanted.items()
        ) and all(label in decisions for label in decided)

    try:
        wait_until(exported, METRICS_TIMEOUT_S)
    except AssertionError:
        missing = {n: found.get(n, [])[:3] for n, label in wanted.items() if n not in found}
        raise AssertionError(f"not exported with the expected labels: {missing}") from None
    ours = {name for name in found if name.startswith("ray_loramux_")}
    assert ours <= exported_names()
    # The first request for "support" was a cold placement, the second found it resident.
    decisions = " ".join(found["ray_loramux_routing_decisions_total"])
    assert 'decision="resident"' in decisions
    assert 'decision="base"' in decisions
