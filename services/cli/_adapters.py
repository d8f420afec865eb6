"""``loramux`` adapter and tenant commands: push, ls, show, rm, alias, pull, and the
``tenant`` group (create, key, revoke, quota, usage, ls).

Each verb is one command over a :class:`Backend`: by default the running service through
the SDK (:class:`~services.cli._service.ServiceBackend`: ``LORAMUX_URL`` /
``LORAMUX_API_KEY`` or the profile of ``loramux up``; tenant commands with
``LORAMUX_ADMIN_KEY``), or with ``--direct`` (``LORAMUX_DIRECT=1``) the adapter store
itself (:class:`~services.cli._store.StoreBackend`), for operators and for working
without a running service.

Failure mode: any error, from either backend, is one ``error:`` line on stderr and exit
status 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated
from typing import Protocol

import typer

from services.cli._common import DirectOption
from services.cli._common import TransferBar
from services.cli._common import fail
from services.cli._common import size
from services.cli._common import transfer_bar
from services.cli._common import when
from services.cli._views import AdapterRow
from services.cli._views import PushRequest
from services.cli._views import UsageView
from services.cli._views import VersionRow
from services.cli._views import VersionView
from services.client import RequestLimits
from services.client import TenantLimitsInfo

__all__ = ["Backend", "register"]

_TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        "-t",
        help="Tenant, with --direct (default: LORAMUX_TENANT); the service uses the key's.",
    ),
]
_MaxAdapters = Annotated[int | None, typer.Option(min=0, help="Unset: unlimited.")]
_MaxBytes = Annotated[int | None, typer.Option(min=0, help="Unset: unlimited.")]


class Backend(Protocol):
    """What the commands need from the service or the store (views, not wire types).

    Methods raise the CLI failure (``typer.Exit`` after an ``error:`` line) for what
    the backend cannot do; their backend's own errors are turned into it by the context
    :func:`open_backend` opens.
    """

    def push(self, request: PushRequest, bar: TransferBar) -> VersionView: ...
    def list_page(self, cursor: str | None, limit: int) -> tuple[list[AdapterRow], str | None]: ...
    def base_model_id(self) -> str: ...
    def show(self, ref: str) -> tuple[VersionView, list[VersionRow]]: ...
    def delete(self, ref: str) -> int: ...
    def set_alias(self, ref: str, alias: str) -> VersionView: ...
    def remove_alias(self, name: str, alias: str) -> None: ...
    def pull(self, ref: str, directory: Path, bar: TransferBar) -> VersionView: ...
    def create_tenant(self, name: str, max_adapters: int | None, max_bytes: int | None) -> str: ...
    def add_key(self, name: str) -> str: ...
    def revoke_key(self, key: str) -> str: ...
    def set_quota(
        self, name: str, max_adapters: int | None, max_bytes: int | None
    ) -> UsageView: ...
    def usage(self, name: str) -> UsageView: ...
    def limits(self, name: str) -> TenantLimitsInfo: ...
    def set_limits(self, name: str, limits: RequestLimits) -> TenantLimitsInfo: ...
    def list_tenants(self) -> list[UsageView]: ...


@contextlib.contextmanager
def open_backend(
    direct: bool, *, tenant: str | None = None, admin: bool = False
) -> Iterator[Backend]:
    """The store backend (``direct``) or the service backend, with its error handling.

    ``admin`` picks ``LORAMUX_ADMIN_KEY`` for the service; ``tenant`` applies only to
    the store (the service's tenant is the key's, so it is refused there).
    """
    if direct:
        from services.cli._store import open_store_backend

        with open_store_backend(tenant) as backend:
            yield backend
        return
    from services.cli import _service

    if tenant is not None:
        raise fail("--tenant needs --direct: through the service the API key picks the tenant")
    client = _service.open_client(_service.admin_key() if admin else None)
    with _service.service_errors(client):
        yield _service.ServiceBackend(client)


# --- adapters -----------------------------------------------------------------------


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
        str | None,
        typer.Option(help="Base model id, with --direct (default: LORAMUX_BASE_MODEL)."),
    ] = None,
    direct: DirectOption = False,
) -> None:
    """Validate a PEFT adapter and publish it as the next version of NAME."""
    with open_backend(direct, tenant=tenant) as backend, transfer_bar(f"push {name}") as bar:
        version = backend.push(PushRequest(directory, name, alias or [], base_model), bar)
    typer.echo(
        f"pushed {version.key} ({size(version.size_bytes)}, rank {version.rank}, "
        f"sha256 {version.digest[:12]})"
    )


def ls(
    tenant: _TenantOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Adapters per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Start after this adapter name.")] = None,
    direct: DirectOption = False,
) -> None:
    """List the tenant's adapters in name order."""
    from rich.console import Console
    from rich.table import Table

    with open_backend(direct, tenant=tenant) as backend:
        rows, next_cursor = backend.list_page(cursor, limit)
    table = Table(
        "name", "latest", "origin", "versions", "aliases", "size", "requests", "last used"
    )
    for row in rows:
        aliases = ", ".join(f"{a}→{v}" for a, v in row.aliases.items() if a != "latest")
        table.add_row(
            row.name,
            str(row.latest.version),
            row.latest.origin,
            str(row.version_count),
            aliases or "-",
            *_usage_cells(row.latest.size_bytes, row.requests, row.last_used_at),
        )
    Console().print(table)
    if next_cursor:
        typer.echo(f"more: loramux ls --cursor {next_cursor}{' --direct' if direct else ''}")


def show(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name:alias")],
    tenant: _TenantOption = None,
    direct: DirectOption = False,
) -> None:
    """Show what REF resolves to and every live version of its adapter."""
    from rich.console import Console
    from rich.table import Table

    with open_backend(direct, tenant=tenant) as backend:
        version, rows = backend.show(ref)
    typer.echo(
        f"{ref} -> {version.key}  base {version.base_model}  rank {version.rank}  "
        f"{size(version.size_bytes)}  sha256 {version.digest}"
    )
    table = Table("version", "origin", "aliases", "created", "size", "requests", "last used")
    for row in rows:
        table.add_row(
            str(row.version.version),
            row.version.origin,
            ", ".join(row.aliases) or "-",
            when(row.version.created_at),
            *_usage_cells(row.version.size_bytes, row.requests, row.last_used_at),
        )
    Console().print(table)


def rm(
    ref: Annotated[str, typer.Argument(help="name (every version) or name@3")],
    tenant: _TenantOption = None,
    direct: DirectOption = False,
) -> None:
    """Delete an adapter or one version (soft: blobs go at the next gc)."""
    with open_backend(direct, tenant=tenant) as backend:
        count = backend.delete(ref)
    typer.echo(f"deleted {count} version(s) of {ref}")


def alias(
    ref: Annotated[str, typer.Argument(help="The version to point at: name@3, name:prod.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove ALIAS of REF's adapter.")
    ] = False,
    tenant: _TenantOption = None,
    direct: DirectOption = False,
) -> None:
    """Point ALIAS at the version REF resolves to (or remove it with --remove)."""
    with open_backend(direct, tenant=tenant) as backend:
        if remove:
            name = ref.partition("@")[0].partition(":")[0]
            backend.remove_alias(name, alias_name)
            typer.echo(f"removed alias {name}:{alias_name}")
            return
        version = backend.set_alias(ref, alias_name)
    typer.echo(f"{version.name}:{alias_name} -> {version.key}")


def pull(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name:alias")],
    directory: Annotated[Path, typer.Argument(help="Where to write the PEFT files.")],
    tenant: _TenantOption = None,
    direct: DirectOption = False,
) -> None:
    """Write the adapter's PEFT files, unchanged, into DIRECTORY."""
    with open_backend(direct, tenant=tenant) as backend, transfer_bar(f"pull {ref}") as bar:
        version = backend.pull(ref, directory, bar)
    typer.echo(f"pulled {version.key} into {directory}")


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _usage_cells(size_bytes: int, requests: int | None, last_used_at: float | None) -> list[str]:
    """The size, requests and last-use cells of an adapter or version row (``-`` where
    the store keeps no usage)."""
    return [size(size_bytes), _count(requests), when(last_used_at)]


# --- tenants (admin) ----------------------------------------------------------------


def tenant_create(
    name: str,
    max_adapters: _MaxAdapters = None,
    max_bytes: _MaxBytes = None,
    direct: DirectOption = False,
) -> None:
    """Create a tenant; print its first API key (shown once, only a hash is stored)."""
    with open_backend(direct, admin=True) as backend:
        key = backend.create_tenant(name, max_adapters, max_bytes)
    typer.echo(f"created tenant {name}; its API key (shown once):", err=True)
    typer.echo(key)


def tenant_key(name: str, direct: DirectOption = False) -> None:
    """Issue another API key for a tenant and print it."""
    with open_backend(direct, admin=True) as backend:
        key = backend.add_key(name)
    typer.echo(key)


def tenant_revoke(key: str, direct: DirectOption = False) -> None:
    """Revoke an API key at once."""
    with open_backend(direct, admin=True) as backend:
        tenant = backend.revoke_key(key)
    typer.echo(f"revoked a key of tenant {tenant}")


def tenant_quota(
    name: str,
    max_adapters: _MaxAdapters = None,
    max_bytes: _MaxBytes = None,
    direct: DirectOption = False,
) -> None:
    """Set a tenant's quotas (an omitted one becomes unlimited)."""
    with open_backend(direct, admin=True) as backend:
        usage = backend.set_quota(name, max_adapters, max_bytes)
    typer.echo(_usage_line(usage))


def tenant_usage(name: str, direct: DirectOption = False) -> None:
    """Print a tenant's adapter count and stored bytes against its quotas."""
    with open_backend(direct, admin=True) as backend:
        usage = backend.usage(name)
    typer.echo(_usage_line(usage))


def tenant_limits(
    name: str,
    requests_per_s: Annotated[
        float | None, typer.Option(min=0.001, help="Requests per second (burst: one second).")
    ] = None,
    tokens_per_min: Annotated[
        int | None, typer.Option(min=1, help="Prompt and completion tokens per minute.")
    ] = None,
    max_in_flight: Annotated[int | None, typer.Option(min=1, help="Requests under way.")] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Drop the tenant's own limits first.")
    ] = False,
    direct: DirectOption = False,
) -> None:
    """Show a tenant's request limits; with options, set those (the others are kept)."""
    given = {
        "requests_per_s": requests_per_s,
        "tokens_per_min": tokens_per_min,
        "max_in_flight": max_in_flight,
    }
    changes = {field: value for field, value in given.items() if value is not None}
    with open_backend(direct, admin=True) as backend:
        info = backend.limits(name)
        if changes or reset:
            own = {} if reset else info.own.model_dump()
            info = backend.set_limits(name, RequestLimits(**{**own, **changes}))
    typer.echo(_limits_line(info))


def _limits_line(info: TenantLimitsInfo) -> str:
    """``acme: requests_per_s 5 (own), tokens_per_min 1000000 (default), ...``."""
    own, effective = info.own.model_dump(), info.effective.model_dump()
    parts = [
        f"{field} {_limit(value)} ({'default' if own[field] is None else 'own'})"
        for field, value in effective.items()
    ]
    return f"{info.tenant}: " + ", ".join(parts)


def _limit(value: float | None) -> str:
    if value is None:
        return "unlimited"
    return str(value) if isinstance(value, int) else f"{value:g}"


def tenant_ls(direct: DirectOption = False) -> None:
    """List tenants with their usage and quotas."""
    from rich.console import Console
    from rich.table import Table

    with open_backend(direct, admin=True) as backend:
        tenants = backend.list_tenants()
    table = Table("tenant", "adapters", "bytes", "max adapters", "max bytes")
    for usage in tenants:
        table.add_row(
            usage.tenant,
            str(usage.adapters),
            str(usage.bytes),
            _count(usage.max_adapters),
            _count(usage.max_bytes),
        )
    Console().print(table)


def _usage_line(usage: UsageView) -> str:
    return (
        f"{usage.tenant}: {usage.adapters}/{_count_or_unlimited(usage.max_adapters)} adapters, "
        f"{usage.bytes}/{_count_or_unlimited(usage.max_bytes)} bytes"
    )


def _count_or_unlimited(value: int | None) -> str:
    return "∞" if value is None else str(value)


def register(app: typer.Typer) -> None:
    """Add the adapter commands and the ``tenant`` group to ``app``."""
    for command in (push, ls, show, rm, alias, pull):
        app.command(command.__name__)(command)
    tenant_app = typer.Typer(
        help="Tenants, API keys and quotas (LORAMUX_ADMIN_KEY, or --direct).",
        no_args_is_help=True,
    )
    tenant_app.command("create")(tenant_create)
    tenant_app.command("key")(tenant_key)
    tenant_app.command("revoke")(tenant_revoke)
    tenant_app.command("quota")(tenant_quota)
    tenant_app.command("usage")(tenant_usage)
    tenant_app.command("limits")(tenant_limits)
    tenant_app.command("ls")(tenant_ls)
    app.add_typer(tenant_app, name="tenant")
