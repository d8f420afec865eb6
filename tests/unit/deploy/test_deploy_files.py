"""The files under deploy/: valid for the tools that read them, and in agreement with each
other and with the metrics the service exports. (The Serve config is also deployed for
real in tests/integration/deploy.)"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services._settings import ServiceSettings
from services.api._metrics import METRICS
from services.api._metrics import exported_names

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
SERVE_CONFIG = DEPLOY / "serve" / "loramux.yaml"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
GRAFANA = DEPLOY / "grafana" / "loramux.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

# A PromQL metric name: an identifier followed by a selector, a range or a parenthesis,
# that is not a function, an aggregation keyword or a label inside a selector.
_PROMQL_WORDS = {"sum", "rate", "increase", "histogram_quantile", "topk", "by", "without"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def resolve(import_path: str) -> Any:
    module, _, name = import_path.partition(":")
    return getattr(importlib.import_module(module), name)


def test_the_serve_config_validates_as_rays_deploy_schema() -> None:
    config = ServeDeploySchema.model_validate(load(SERVE_CONFIG))
    (app,) = config.applications
    assert resolve(app.import_path).__name__ == "app_builder"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Model", "Ingress", "StatsBoard"}
    model = deployments["Model"]
    assert model.ray_actor_options.num_gpus == 1
    assert model.autoscaling_config["min_replicas"] <= model.autoscaling_config["max_replicas"]
    router = model.request_router_config
    assert resolve(router["request_router_class"]).__name__ == "CacheAwareRequestRouter"
    assert "LORAMUX_BLOB_URL" in app.runtime_env["env_vars"]


def test_the_serve_configs_args_are_service_settings_and_hold_no_secret() -> None:
    (app,) = load(SERVE_CONFIG)["applications"]
    settings = ServiceSettings(**app["args"])
    assert settings.gpu_slots == app["args"]["gpu_slots"]
    assert "admin_key" not in app["args"]
    secrets = {
        "LORAMUX_ADMIN_KEY",
        "LORAMUX_REDIS_URL",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
    }
    assert not secrets & set(app["runtime_env"]["env_vars"])


def test_the_serve_configs_router_kwargs_are_what_the_app_builder_derives() -> None:
    """A deployment's ``request_router_config`` in the config replaces the one
    ``app_builder`` made from ``args``, so it must carry the same kwargs (the Redis URL's
    variable, the batch-derived holder floor...)."""
    from services.serve._app import router_config

    (app,) = load(SERVE_CONFIG)["applications"]
    (model,) = (d for d in app["deployments"] if d["name"] == "Model")
    derived = router_config(ServiceSettings(**app["args"])).request_router_kwargs
    assert model["request_router_config"]["request_router_kwargs"] == derived


def test_the_rayservice_serves_the_same_config() -> None:
    service = load(RAYSERVICE)
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == load(SERVE_CONFIG)


def test_the_rayservice_has_a_gpu_worker_group_exporting_metrics() -> None:
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    (gpu,) = cluster["workerGroupSpecs"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["envFrom"] == [{"secretRef": {"name": "loramux-secrets"}}]
    (app,) = load(SERVE_CONFIG)["applications"]
    model = next(d for d in app["deployments"] if d["name"] == "Model")
    assert gpu["maxReplicas"] >= model["autoscaling_config"]["max_replicas"]
    ports = {
        group["rayStartParams"]["metrics-export-port"] for group in (cluster["headGroupSpec"], gpu)
    }
    assert ports == {"8080"}


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_parse_and_live_in_the_loramux_namespace(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    for document in documents:
        assert document["apiVersion"] and document["kind"]
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "loramux"


def test_redis_is_persistent() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "redis.yaml").read_text()))
    (redis,) = [d for d in documents if d["kind"] == "StatefulSet"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"]


def promql_metric_names(expr: str) -> set[str]:
    without_selectors = re.sub(r"\{[^}]*\}", "{}", expr)
    without_groupings = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_selectors)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*[\[{]", without_groupings))
    return names - _PROMQL_WORDS


def test_promql_name_parsing() -> None:
    expr = 'sum by (le, source) (rate(ray_x_bucket{a="b"}[5m])) / sum(ray_y{})'
    assert promql_metric_names(expr) == {"ray_x_bucket", "ray_y"}


def test_every_grafana_query_names_a_metric_the_service_exports() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(promql_metric_names(expr) for expr in exprs))
    assert used, "no metric names found in the dashboard's queries"
    assert used <= exported_names(), used - exported_names()
    # Hit rates, residency, load latency and routing each have a panel.
    for needed in (
        "ray_loramux_cache_lookups_total",
        "ray_loramux_resident_adapters",
        "ray_loramux_adapter_load_seconds_bucket",
        "ray_loramux_routing_decisions_total",
    ):
        assert needed in used
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_metric_is_on_the_dashboard() -> None:
    text = GRAFANA.read_text()
    assert [spec.name for spec in METRICS if f"ray_{spec.name}" not in text] == []


def test_prometheus_scrapes_rays_metrics_port() -> None:
    config = load(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["ray"]["static_configs"][0]["targets"]
    assert targets and all(target.endswith(":8080") for target in targets)
    (file_sd,) = jobs["ray-discovered"]["file_sd_configs"]
    assert file_sd["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_redis_needs_its_password_and_only_the_ray_cluster_reaches_it() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "redis.yaml").read_text()))
    (redis,) = [d for d in documents if d["kind"] == "StatefulSet"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    secret_refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert secret_refs == {"REDIS_PASSWORD"}
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app": "redis"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "loramux"}}}]
    secret = yaml.safe_load((DEPLOY / "k8s" / "secrets.example.yaml").read_text())
    assert secret["stringData"]["LORAMUX_REDIS_URL"].startswith("redis://:")
