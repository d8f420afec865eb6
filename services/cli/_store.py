"""The ``loramux`` backend that works on the adapter store directly (``--direct``), and
the operator commands that exist only there: ``gc`` and ``base register``.

:class:`StoreBackend` answers the adapter and tenant verbs of
:mod:`services.cli._adapters` from :class:`AdapterStore`. Settings are
:class:`StoreSettings` from ``LORAMUX_*`` environment variables; with no
``LORAMUX_REDIS_URL`` the embedded store under ``LORAMUX_DATA_DIR`` is used (a private
redis-server, started for the command when nothing else runs it). Heavy imports (redis,
boto3, torch) happen inside functions, so ``import services.cli`` stays light.

Failure mode: every store error is printed as one ``error: ...`` line on stderr and the
command exits with status 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated

import typer

from services.cli._common import TransferBar
from services.cli._common import fail
from services.cli._common import size
from services.cli._views import AdapterRow
from services.cli._views import PushRequest
from services.cli._views import UsageView
from services.cli._views import VersionRow
from services.cli._views import VersionView
from services.client import RequestLimits
from services.client import TenantLimitsInfo

if TYPE_CHECKING:
    from adapter_store import AdapterStore
    from adapter_store import StoreSettings

__all__ = ["StoreBackend", "open_store_backend", "register"]


@contextlib.contextmanager
def _open_store() -> Iterator[tuple[AdapterStore, StoreSettings]]:
    """The configured store; store errors and bad settings end the command cleanly."""
    from pydantic import ValidationError

    from adapter_store import AdapterStore
    from adapter_store import AdapterStoreError
    from adapter_store import StoreSettings

    try:
        settings = StoreSettings()
        with AdapterStore.from_settings(settings) as store:
            yield store, settings
    except AdapterStoreError as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        raise fail(f"invalid LORAMUX_* setting: {exc}") from None


@contextlib.contextmanager
def open_store_backend(tenant: str | None) -> Iterator[StoreBackend]:
    """A :class:`StoreBackend` for ``tenant`` (default ``LORAMUX_TENANT``)."""
    with _open_store() as (store, settings):
        yield StoreBackend(store, settings, tenant or settings.tenant)


class StoreBackend:
    """The adapter verbs for one tenant, and the tenant verbs, on the store itself."""

    def __init__(self, store: AdapterStore, settings: StoreSettings, tenant: str) -> None:
        self._store = store
        self._settings = settings
        self._tenant = tenant

    # --- adapters -----------------------------------------------------------------

    def push(self, request: PushRequest, bar: TransferBar) -> VersionView:
        from adapter_store import read_adapter_source

        if self._tenant == self._settings.tenant:
            self._store.ensure_tenant(self._tenant)  # the default tenant appears on first use
        files = read_adapter_source(request.path, self._store.limits)
        bar.start(files.size_bytes)
        version = self._store.push(
            self._tenant,
            request.name,
            files,
            base_model=request.base_model or self._settings.base_model,
            aliases=request.aliases,
            on_progress=bar.advance,
            origin=request.origin,
        )
        return VersionView.of(version)

    def base_model_id(self) -> str:
        return self._settings.base_model

    def list_page(self, cursor: str | None, limit: int) -> tuple[list[AdapterRow], str | None]:
        page = self._store.list_adapters(self._tenant, cursor=cursor, limit=limit)
        rows = [
            AdapterRow(
                name=info.name,
                latest=VersionView.of(info.latest),
                version_count=len(info.versions),
                aliases=dict(info.aliases),
                requests=info.request_count,
                last_used_at=info.last_used_at,
            )
            for info in page.items
        ]
        return rows, page.next_cursor

    def show(self, ref: str) -> tuple[VersionView, list[VersionRow]]:
        from adapter_store import AdapterRef

        version = self._store.resolve(self._tenant, ref)
        name = AdapterRef.parse(ref).name
        rows = [
            VersionRow(
                VersionView.of(row.version), row.aliases, row.request_count, row.last_used_at
            )
            for row in self._store.iter_versions(self._tenant, name)
        ]
        return VersionView.of(version), rows

    def delete(self, ref: str) -> int:
        return self._store.delete(self._tenant, ref)

    def set_alias(self, ref: str, alias: str) -> VersionView:
        return VersionView.of(self._store.set_alias(self._tenant, ref, alias))

    def remove_alias(self, name: str, alias: str) -> None:
        self._store.remove_alias(self._tenant, name, alias)

    def pull(self, ref: str, directory: Path, bar: TransferBar) -> VersionView:
        version = self._store.resolve(self._tenant, ref)
        bar.start(version.size_bytes)
        exact = f"{version.name}@{version.version}"  # what was resolved is what is pulled
        self._store.pull(self._tenant, exact, directory, bar.advance)
        return VersionView.of(version)

    # --- tenants ------------------------------------------------------------------

    def create_tenant(self, name: str, max_adapters: int | None, max_bytes: int | None) -> str:
        _, key = self._store.create_tenant(name, max_adapters=max_adapters, max_bytes=max_bytes)
        return key

    def add_key(self, name: str) -> str:
        return self._store.issue_key(name)

    def revoke_key(self, key: str) -> str:
        return self._store.revoke_key(key)

    def set_quota(self, name: str, max_adapters: int | None, max_bytes: int | None) -> UsageView:
        self._store.set_quota(name, max_adapters=max_adapters, max_bytes=max_bytes)
        return self.usage(name)

    def usage(self, name: str) -> UsageView:
        return UsageView.of(self._store.get_usage(name))

    def limits(self, name: str) -> TenantLimitsInfo:
        """The tenant's limits over the defaults of this process's settings
        (``LORAMUX_TENANT_*``), as the service it shares them with applies them."""
        from services._settings import LimitSettings

        own = self._store.get_limits(name)
        return TenantLimitsInfo.of(name, own, own.over(LimitSettings().tenant_defaults()))

    def set_limits(self, name: str, limits: RequestLimits) -> TenantLimitsInfo:
        from adapter_store import TenantLimits

        self._store.set_limits(name, TenantLimits(**limits.model_dump()))
        return self.limits(name)

    def list_tenants(self) -> list[UsageView]:
        return [self.usage(name) for name in self._store.list_tenants()]


def gc(
    grace_s: Annotated[
        float,
        typer.Option(
            min=0,
            help="Spare blobs a push announced this recently. Keep it longer than a push "
            "takes: a push whose blobs gc deletes uploads them again once, then fails "
            "(nothing is published on a deleted blob).",
        ),
    ] = 3600.0,
) -> None:
    """Remove blobs no live version references, and old deleted versions' metadata."""
    with _open_store() as (store, _):
        report = store.gc(grace_s=grace_s)
    typer.echo(
        f"deleted {report.blobs_deleted} blob(s), freed {size(report.bytes_freed)}, kept "
        f"{report.blobs_kept} recent one(s), purged {report.versions_purged} version(s)"
    )


def base_register(
    model_id: Annotated[str, typer.Option("--id", help="Base model id pushes will name.")],
    directory: Annotated[
        Path | None,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="Local Hugging Face causal LM directory (omit for a built-in model).",
        ),
    ] = None,
) -> None:
    """Register a base model's module shapes, read from its config (no weights loaded)."""
    import torch
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM

    from adapter_store import manifest_from_model

    with _open_store() as (store, settings):
        if directory is None:
            from services.engine import BUILTIN_MODELS
            from services.engine import builtin_model_dir

            directory = builtin_model_dir(model_id, settings.data_dir / "models")
            if directory is None:
                raise fail(
                    f"give the model directory of {model_id!r} (built-in models: "
                    f"{', '.join(BUILTIN_MODELS)})"
                )
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
        manifest = manifest_from_model(model_id, model)
        store.register_manifest(manifest)
    typer.echo(f"registered base model {model_id}: {len(manifest.modules)} linear modules")


def register(app: typer.Typer) -> None:
    """Add ``gc`` and the ``base`` group (store-only commands) to ``app``."""
    app.command("gc")(gc)
    base_app = typer.Typer(help="Base model manifests.", no_args_is_help=True)
    base_app.command("register")(base_register)
    app.add_typer(base_app, name="base")
