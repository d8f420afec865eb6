"""``loramux`` commands that work on the adapter store directly (operator side).

push, ls, show, rm, alias, pull, gc, and the ``tenant`` and ``base`` groups. They read
:class:`StoreSettings` from ``LORAMUX_*`` environment variables; with no
``LORAMUX_REDIS_URL`` they use the embedded store under ``LORAMUX_DATA_DIR`` (a private
redis-server, started for the command when nothing else runs it). Heavy imports (redis,
boto3, torch) happen inside the commands, so ``import services.cli`` stays light.

Failure mode: every store error is printed as one ``error: ...`` line on stderr and the
command exits with status 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from adapter_store import AdapterStore, StoreSettings

__all__ = ["register"]

_TenantOption = Annotated[
    str | None, typer.Option("--tenant", "-t", help="Tenant (default: LORAMUX_TENANT).")
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


@contextlib.contextmanager
def _open_store() -> Iterator[tuple[AdapterStore, StoreSettings]]:
    """The configured store; store errors and bad settings end the command cleanly."""
    from pydantic import ValidationError

    from adapter_store import AdapterStore, AdapterStoreError, StoreSettings

    try:
        settings = StoreSettings()
        with AdapterStore.from_settings(settings) as store:
            yield store, settings
    except AdapterStoreError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        raise _fail(f"invalid LORAMUX_* setting: {exc}") from None


@contextlib.contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich transfer bar; yields the ``on_progress`` callback (byte increments)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _when(timestamp: float | None) -> str:
    import datetime

    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def push(
    directory: Annotated[
        Path, typer.Argument(exists=True, help="PEFT adapter directory, archive or file.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name.")],
    alias: Annotated[
        list[str] | None, typer.Option("--alias", "-a", help="Alias to point at it.")
    ] = None,
    tenant: _TenantOption = None,
    base_model: Annotated[
        str | None, typer.Option(help="Base model id (default: LORAMUX_BASE_MODEL).")
    ] = None,
) -> None:
    """Validate a PEFT adapter and publish it as the next version of NAME."""
    from adapter_store import read_adapter_source

    with _open_store() as (store, settings):
        tenant = tenant or settings.tenant
        if tenant == settings.tenant:
            store.ensure_tenant(tenant)
        files = read_adapter_source(directory, store.limits)
        with _progress(f"push {name}", files.size_bytes) as on_progress:
            version = store.push(
                tenant,
                name,
                files,
                base_model=base_model or settings.base_model,
                aliases=alias or (),
                on_progress=on_progress,
            )
        typer.echo(
            f"pushed {version.key} ({_size(version.size_bytes)}, rank {version.rank}, "
            f"sha256 {version.digest[:12]})"
        )


def ls(
    tenant: _TenantOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Adapters per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Start after this adapter name.")] = None,
) -> None:
    """List the tenant's adapters in name order."""
    from rich.console import Console
    from rich.table import Table

    with _open_store() as (store, settings):
        page = store.list_adapters(tenant or settings.tenant, cursor=cursor, limit=limit)
    table = Table("name", "latest", "versions", "aliases", "size", "requests", "last used")
    for info in page.items:
        aliases = ", ".join(f"{a}→{v}" for a, v in info.aliases.items() if a != "latest")
        table.add_row(
            info.name,
            str(info.latest.version),
            str(len(info.versions)),
            aliases or "-",
            _size(info.latest.size_bytes),
            str(info.request_count),
            _when(info.last_used_at),
        )
    Console().print(table)
    if page.next_cursor:
        typer.echo(f"more: loramux ls --cursor {page.next_cursor}")


def show(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name:alias")],
    tenant: _TenantOption = None,
) -> None:
    """Show what REF resolves to and every live version of its adapter."""
    from rich.console import Console
    from rich.table import Table

    from adapter_store import AdapterRef

    with _open_store() as (store, settings):
        tenant = tenant or settings.tenant
        version = store.resolve(tenant, ref)
        name = AdapterRef.parse(ref).name
        rows, cursor = [], None
        while True:
            page = store.list_versions(tenant, name, cursor=cursor, limit=1000)
            rows.extend(page.items)
            if (cursor := page.next_cursor) is None:
                break
    typer.echo(
        f"{ref} -> {version.key}  base {version.base_model}  rank {version.rank}  "
        f"{_size(version.size_bytes)}  sha256 {version.digest}"
    )
    table = Table("version", "aliases", "created", "size", "requests", "last used")
    for row in rows:
        table.add_row(
            str(row.version.version),
            ", ".join(row.aliases) or "-",
            _when(row.version.created_at),
            _size(row.version.size_bytes),
            str(row.request_count),
            _when(row.last_used_at),
        )
    Console().print(table)


def rm(
    ref: Annotated[str, typer.Argument(help="name (every version) or name@3")],
    tenant: _TenantOption = None,
) -> None:
    """Delete an adapter or one version (soft: blobs go at the next gc)."""
    with _open_store() as (store, settings):
        tenant = tenant or settings.tenant
        count = store.delete(tenant, ref)
    typer.echo(f"deleted {count} version(s) of {tenant}/{ref}")


def alias(
    ref: Annotated[str, typer.Argument(help="The version to point at: name@3, name:prod.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove ALIAS of REF's adapter.")
    ] = False,
    tenant: _TenantOption = None,
) -> None:
    """Point ALIAS at the version REF resolves to (or remove it with --remove)."""
    from adapter_store import AdapterRef

    with _open_store() as (store, settings):
        tenant = tenant or settings.tenant
        if remove:
            name = AdapterRef.parse(ref).name
            store.remove_alias(tenant, name, alias_name)
            typer.echo(f"removed alias {name}:{alias_name}")
            return
        version = store.set_alias(tenant, ref, alias_name)
    typer.echo(f"{version.name}:{alias_name} -> {version.key}")


def pull(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name:alias")],
    directory: Annotated[Path, typer.Argument(help="Where to write the PEFT files.")],
    tenant: _TenantOption = None,
) -> None:
    """Write the adapter's PEFT files, unchanged, into DIRECTORY."""
    with _open_store() as (store, settings):
        tenant = tenant or settings.tenant
        version = store.resolve(tenant, ref)
        with _progress(f"pull {version.key}", version.size_bytes) as on_progress:
            store.pull(tenant, f"{version.name}@{version.version}", directory, on_progress)
    typer.echo(f"pulled {version.key} into {directory}")


def gc(
    grace_s: Annotated[
        float, typer.Option(min=0, help="Spare blobs a push announced this recently.")
    ] = 3600.0,
) -> None:
    """Remove blobs no live version references, and old deleted versions' metadata."""
    with _open_store() as (store, _):
        report = store.gc(grace_s=grace_s)
    typer.echo(
        f"deleted {report.blobs_deleted} blob(s), freed {_size(report.bytes_freed)}, kept "
        f"{report.blobs_kept} recent one(s), purged {report.versions_purged} version(s)"
    )


def tenant_create(
    name: str,
    max_adapters: Annotated[int | None, typer.Option(min=0)] = None,
    max_bytes: Annotated[int | None, typer.Option(min=0)] = None,
) -> None:
    """Create a tenant; print its first API key (shown once, only a hash is stored)."""
    with _open_store() as (store, _):
        _, key = store.create_tenant(name, max_adapters=max_adapters, max_bytes=max_bytes)
    typer.echo(f"created tenant {name}; its API key (shown once):", err=True)
    typer.echo(key)


def tenant_key(name: str) -> None:
    """Issue another API key for a tenant and print it."""
    with _open_store() as (store, _):
        key = store.issue_key(name)
    typer.echo(key)


def tenant_revoke(key: str) -> None:
    """Revoke an API key at once."""
    with _open_store() as (store, _):
        tenant = store.revoke_key(key)
    typer.echo(f"revoked a key of tenant {tenant}")


def tenant_quota(
    name: str,
    max_adapters: Annotated[int | None, typer.Option(min=0, help="Unset: unlimited.")] = None,
    max_bytes: Annotated[int | None, typer.Option(min=0, help="Unset: unlimited.")] = None,
) -> None:
    """Set a tenant's quotas (an omitted one becomes unlimited)."""
    with _open_store() as (store, _):
        store.set_quota(name, max_adapters=max_adapters, max_bytes=max_bytes)
        usage = store.get_usage(name)
    typer.echo(
        f"{name}: {usage.adapters}/{usage.max_adapters or '∞'} adapters, "
        f"{usage.bytes}/{usage.max_bytes or '∞'} bytes"
    )


def tenant_ls() -> None:
    """List tenants with their usage and quotas."""
    from rich.console import Console
    from rich.table import Table

    table = Table("tenant", "adapters", "bytes", "max adapters", "max bytes")
    with _open_store() as (store, _):
        for name in store.list_tenants():
            usage = store.get_usage(name)
            table.add_row(
                name,
                str(usage.adapters),
                str(usage.bytes),
                str(usage.max_adapters or "-"),
                str(usage.max_bytes or "-"),
            )
    Console().print(table)


def base_register(
    model_id: Annotated[str, typer.Option("--id", help="Base model id pushes will name.")],
    directory: Annotated[
        Path | None,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="Local Hugging Face causal LM directory (omit for the built-in 'tiny').",
        ),
    ] = None,
) -> None:
    """Register a base model's module shapes, read from its config (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from adapter_store import manifest_from_model

    with _open_store() as (store, settings):
        if directory is None:
            from services.engine._tiny import TINY_MODEL_NAME, ensure_tiny_model

            if model_id != TINY_MODEL_NAME:
                raise _fail(f"give the model directory of {model_id!r}")
            directory = ensure_tiny_model(settings.data_dir / "models")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
        manifest = manifest_from_model(model_id, model)
        store.register_manifest(manifest)
    typer.echo(f"registered base model {model_id}: {len(manifest.modules)} linear modules")


def register(app: typer.Typer) -> None:
    """Add the store commands and the ``tenant`` and ``base`` groups to ``app``."""
    for command in (push, ls, show, rm, alias, pull, gc):
        app.command(command.__name__)(command)
    tenant_app = typer.Typer(help="Tenants, API keys and quotas.", no_args_is_help=True)
    tenant_app.command("create")(tenant_create)
    tenant_app.command("key")(tenant_key)
    tenant_app.command("revoke")(tenant_revoke)
    tenant_app.command("quota")(tenant_quota)
    tenant_app.command("ls")(tenant_ls)
    app.add_typer(tenant_app, name="tenant")
    base_app = typer.Typer(help="Base model manifests.", no_args_is_help=True)
    base_app.command("register")(base_register)
    app.add_typer(base_app, name="base")
