"""ServiceSettings composes the store's settings from the same LORAMUX_ environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services._settings import ServiceSettings


def test_service_and_store_fields_come_from_one_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LORAMUX_REPLICAS", "3")
    monkeypatch.setenv("LORAMUX_ADMIN_KEY", "secret")
    monkeypatch.setenv("LORAMUX_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("LORAMUX_DATA_DIR", str(tmp_path))

    settings = ServiceSettings()

    assert settings.replicas == 3
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == "secret"
    assert settings.store.redis_url == "redis://127.0.0.1:1/0"
    assert settings.store.data_dir == tmp_path
    assert settings.base_model_id == "tiny"
    assert "secret" not in repr(settings)


def test_bad_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match="replicas"):
        ServiceSettings(replicas=0)
    with pytest.raises(ValidationError, match="unknown_option"):
        ServiceSettings(unknown_option=1)


def test_explicit_gpus_win_over_detection() -> None:
    assert ServiceSettings(num_gpus=0).replica_num_gpus() == 0
    assert ServiceSettings(num_gpus=2).replica_num_gpus() == 2


def test_a_fixed_replica_count_unless_max_replicas_asks_for_autoscaling() -> None:
    assert ServiceSettings(replicas=3).model_scaling() == {"num_replicas": 3}

    scaling = ServiceSettings(replicas=2, max_replicas=6, target_ongoing_requests=8).model_scaling()

    assert scaling["num_replicas"] == "auto"
    assert scaling["autoscaling_config"] == {
        "min_replicas": 2,
        "initial_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 8,
    }


def test_max_replicas_below_replicas_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="max_replicas \\(1\\) is below replicas \\(2\\)"):
        ServiceSettings(replicas=2, max_replicas=1)


def test_quantize_comes_from_the_environment_and_names_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typing import get_args

    from services.engine import QUANTIZATIONS

    monkeypatch.setenv("LORAMUX_QUANTIZE", "nf4")

    assert ServiceSettings().quantize == "nf4"
    assert get_args(ServiceSettings.model_fields["quantize"].annotation) == QUANTIZATIONS
    with pytest.raises(ValidationError, match=r"quantize\n.*'none', 'nf4' or 'int8'"):
        ServiceSettings(quantize="fp8")


def test_gpu_slots_are_derived_unless_set() -> None:
    assert ServiceSettings().gpu_slots is None
    assert ServiceSettings(gpu_slots=3).gpu_slots == 3


def test_the_router_config_holds_no_redis_url() -> None:
    """A Serve config is shown in clear (``serve status``, the dashboard): the Redis URL,
    which may hold a password, stays out of it; the router reads it from its process's
    environment."""
    from adapter_store import StoreSettings
    from services.serve._app import REDIS_URL_ENV
    from services.serve._app import router_config

    secret = "s3cret-redis-password"
    settings = ServiceSettings(store=StoreSettings(redis_url=f"redis://:{secret}@redis:6379/0"))
    config = router_config(settings)

    assert secret not in config.model_dump_json()
    assert config.request_router_kwargs["redis_url_env"] == REDIS_URL_ENV == "LORAMUX_REDIS_URL"


def test_a_holder_takes_an_adapters_requests_up_to_the_replicas_batch_size() -> None:
    from services.serve._app import router_config

    kwargs = router_config(ServiceSettings(max_batch_size=8)).request_router_kwargs
    assert kwargs["holder_floor"] == 8
    assert kwargs["policy"] == "adaptive"
    # A policy without the option is not given it (make_policy would refuse it).
    kwargs = router_config(
        ServiceSettings(max_batch_size=8, routing_policy="round_robin")
    ).request_router_kwargs
    assert "holder_floor" not in kwargs


def test_build_app_can_leave_routing_to_ray_serve_for_the_routing_benchmark() -> None:
    """``benchmarks/bench_serve_routing.py`` runs the same deployment under Ray Serve's
    default router and its own model class; by default the cache-aware router routes."""
    from services.serve import ModelReplica
    from services.serve import build_app

    class Subclass(ModelReplica):
        pass

    def model_deployment(app: Any) -> Any:
        ingress = app._bound_deployment  # Ray's bound graph: Ingress(settings, model, ...)
        return ingress.init_args[1]._bound_deployment

    default = model_deployment(build_app(ServiceSettings()))
    baseline = model_deployment(
        build_app(ServiceSettings(), model_class=Subclass, cache_aware_routing=False)
    )

    routers = [
        d._deployment_config.request_router_config.request_router_class for d in (default, baseline)
    ]
    assert routers[0] == "services.serve:CacheAwareRequestRouter"
    assert routers[1].endswith("PowerOfTwoChoicesRequestRouter")  # Ray Serve's default
    assert (default.func_or_class, baseline.func_or_class) == (ModelReplica, Subclass)
