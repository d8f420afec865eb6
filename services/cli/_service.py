"""The ``loramux`` commands' way to the running service: the SDK :class:`Client`.

Connection settings are the SDK's: ``LORAMUX_URL`` / ``LORAMUX_API_KEY``, else the
profile ``loramux up`` writes; tenant administration uses ``LORAMUX_ADMIN_KEY``.

Failure mode: an error answer is printed as one ``error:`` line (the server's message)
and the command exits with status 1; an unreachable service says how to start one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from services.cli._common import TransferBar
from services.cli._common import fail
from services.cli._views import AdapterRow
from services.cli._views import PushRequest
from services.cli._views import UsageView
from services.cli._views import VersionRow
from services.cli._views import VersionView
from services.client import Client
from services.client import RequestLimits
from services.client import TenantLimitsInfo
from services.client._models import AdapterVersionInfo
from services.exceptions import APIConnectionError
from services.exceptions import LoramuxError

__all__ = ["ServiceBackend", "admin_key", "open_client", "service_errors"]


def open_client(api_key: str | None = None) -> Client:
    """The SDK client every service-backed command uses (the one place to change how)."""
    return Client(api_key=api_key)


def admin_key() -> str:
    """``LORAMUX_ADMIN_KEY``; raises the CLI failure when it is not set."""
    key = os.environ.get("LORAMUX_ADMIN_KEY")
    if not key:
        raise fail(
            "tenant commands need the admin key: set LORAMUX_ADMIN_KEY (`loramux up` prints "
            "it), or pass --direct to work on the store"
        )
    return key


@contextlib.contextmanager
def service_errors(client: Client) -> Iterator[Client]:
    """Closes ``client``; turns SDK errors into ``error:`` lines and exit status 1."""
    try:
        with client:
            yield client
    except APIConnectionError as exc:
        raise fail(
            f"cannot reach the loramux service at {client.base_url} ({exc}); start one with "
            "`loramux up`, or set LORAMUX_URL to a running service (or pass --direct to "
            "work on the store)"
        ) from None
    except LoramuxError as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        raise fail(f"invalid parameter: {exc}") from None


class ServiceBackend:
    """The adapter and tenant verbs over HTTP, for the tenant of the client's key.

    The service decides the tenant (from the key) and the base model (the one it
    serves), so ``--tenant`` and ``--base-model`` are refused here, naming ``--direct``.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    # --- adapters -----------------------------------------------------------------

    def push(self, request: PushRequest, bar: TransferBar) -> VersionView:
        if request.base_model is not None:
            raise fail(
                "--base-model needs --direct: the service pushes for the base model it serves"
            )
        pushed = self._client.adapters.push(
            request.path, request.name, on_progress=bar.report, origin=request.origin
        )
        for alias in request.aliases:
            self._client.adapters.alias(request.name, alias, pushed.version)
        return VersionView.of(pushed)

    def base_model_id(self) -> str:
        """The base model the service serves (the one entry of /v1/models with no parent)."""
        return next(m.id for m in self._client.models().data if m.parent is None)

    def list_page(self, cursor: str | None, limit: int) -> tuple[list[AdapterRow], str | None]:
        page = self._client.adapters.list_page(cursor=cursor, limit=limit)
        counters = self._client.stats().adapters or {}
        rows = [
            AdapterRow(
                name=info.name,
                latest=VersionView.of(info.latest),
                version_count=len(info.versions),
                aliases=info.aliases,
                requests=counters[info.name].requests if info.name in counters else None,
                last_used_at=counters[info.name].last_used_at if info.name in counters else None,
            )
            for info in page.data
        ]
        return rows, page.next_cursor

    def show(self, ref: str) -> tuple[VersionView, list[VersionRow]]:
        resolved = self._resolve(ref)
        adapter = self._client.adapters.get(resolved.name)
        rows = [
            VersionRow(
                version=VersionView.of(
                    info := self._client.adapters.get_version(adapter.name, number)
                ),
                aliases=tuple(info.aliases),
                requests=None,  # the API counts requests per adapter, not per version
                last_used_at=None,
            )
            for number in adapter.versions
        ]
        return VersionView.of(resolved), rows

    def delete(self, ref: str) -> int:
        name, version = self._split(ref)
        if isinstance(version, str):
            raise fail(f"rm takes 'name' or 'name@VERSION', not an alias: {ref!r}")
        count = 1 if version is not None else len(self._client.adapters.get(name).versions)
        self._client.adapters.delete(name, version=version)
        return count

    def set_alias(self, ref: str, alias: str) -> VersionView:
        resolved = self._resolve(ref)
        self._client.adapters.alias(resolved.name, alias, resolved.version)
        return VersionView.of(resolved)

    def remove_alias(self, name: str, alias: str) -> None:
        self._client.adapters.remove_alias(name, alias)

    def pull(self, ref: str, directory: Path, bar: TransferBar) -> VersionView:
        resolved = self._resolve(ref)
        exact = f"{resolved.name}@{resolved.version}"  # what was resolved is what is pulled
        self._client.adapters.download(exact, directory, on_progress=bar.report)
        return VersionView.of(resolved)

    @staticmethod
    def _split(ref: str) -> tuple[str, int | str | None]:
        """``name`` -> (name, None); ``name@3`` -> (name, 3); ``name:prod`` -> (name, 'prod')."""
        if "@" in ref:
            name, _, number = ref.partition("@")
            if not number.isascii() or not number.isdigit() or int(number) < 1:
                raise fail(f"reference {ref!r}: the version after '@' must be an integer >= 1")
            return name, int(number)
        if ":" in ref:
            name, _, alias = ref.partition(":")
            return name, alias
        return ref, None

    def _resolve(self, ref: str) -> AdapterVersionInfo:
        name, selector = self._split(ref)
        if isinstance(selector, int):
            return self._client.adapters.get_version(name, selector)
        adapter = self._client.adapters.get(name)
        if selector is None:
            return adapter.latest
        if selector not in adapter.aliases:
            known = ", ".join(sorted(adapter.aliases)) or "none"
            raise fail(f"adapter {name!r} has no alias {selector!r} (its aliases: {known})")
        return self._client.adapters.get_version(name, adapter.aliases[selector])

    # --- tenants (admin key) ------------------------------------------------------

    def create_tenant(self, name: str, max_adapters: int | None, max_bytes: int | None) -> str:
        key = self._client.tenants.create(name).api_key
        if max_adapters is not None or max_bytes is not None:
            self._client.tenants.set_quota(name, max_adapters=max_adapters, max_bytes=max_bytes)
        return key

    def add_key(self, name: str) -> str:
        return self._client.tenants.add_key(name)

    def revoke_key(self, key: str) -> str:
        return self._client.tenants.revoke_key(key).tenant

    def set_quota(self, name: str, max_adapters: int | None, max_bytes: int | None) -> UsageView:
        usage = self._client.tenants.set_quota(name, max_adapters=max_adapters, max_bytes=max_bytes)
        return UsageView.of(usage)

    def usage(self, name: str) -> UsageView:
        return UsageView.of(self._client.tenants.usage(name))

    def limits(self, name: str) -> TenantLimitsInfo:
        return self._client.tenants.limits(name)

    def set_limits(self, name: str, limits: RequestLimits) -> TenantLimitsInfo:
        return self._client.tenants.set_limits(name, limits)

    def list_tenants(self) -> list[UsageView]:
        # The admin key's /v1/stats carries every tenant's usage.
        tenants = self._client.stats().tenants or {}
        return [UsageView.of(tenants[name]) for name in sorted(tenants)]
