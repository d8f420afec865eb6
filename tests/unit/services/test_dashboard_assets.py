"""The dashboard's static assets: served from the allow-list, with the right content
types and security headers, and self-contained (no URL to any other host)."""

from __future__ import annotations

import re
from typing import Any
from typing import cast

import httpx
import pytest
from fastapi import FastAPI

from adapter_store import AdapterStore
from services._settings import ServiceSettings
from services.api._dashboard import ASSETS
from services.api._dashboard import dashboard_router
from services.api._dashboard._routes import STATIC_DIR
from services.api._errors import install_error_handlers
from services.client import ReplicaStats
from tests.helpers import asgi_http

# The SVG namespace is an identifier that no browser fetches.
_NAMESPACES = {"http://www.w3.org/2000/svg"}
_URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"'<>)]*""", re.IGNORECASE)


class NoReplicas:
    async def replica_stats(self) -> list[ReplicaStats]:
        return []


def dashboard_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    # The assets never touch the store; the data endpoint is tested with a real one.
    store = cast(AdapterStore, object())
    app.include_router(dashboard_router(store, NoReplicas(), ServiceSettings()))
    return app


@pytest.fixture
async def http() -> Any:
    async with asgi_http(dashboard_app()) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/dashboard", "text/html"),
        ("/dashboard/static/dashboard.js", "text/javascript"),
        ("/dashboard/static/dashboard.css", "text/css"),
        ("/dashboard/static/favicon.svg", "image/svg+xml"),
    ],
)
async def test_each_asset_is_served_with_its_content_type(
    http: httpx.AsyncClient, path: str, content_type: str
) -> None:
    response = await http.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.content


@pytest.mark.parametrize(
    "name", ["index.html", "..%2F_routes.py", "..%2F..%2F_ingress.py", "missing.js"]
)
async def test_names_outside_the_allow_list_are_not_found(
    http: httpx.AsyncClient, name: str
) -> None:
    response = await http.get(f"/dashboard/static/{name}")

    assert response.status_code == 404


async def test_the_page_references_only_served_assets(http: httpx.AsyncClient) -> None:
    page = (await http.get("/dashboard")).text
    referenced = set(re.findall(r"""(?:src|href)="([^"]+)\"""", page))

    assert referenced == {f"/dashboard/static/{name}" for name in ASSETS if name}
    for path in referenced:
        assert (await http.get(path)).status_code == 200


def test_no_asset_refers_to_another_host() -> None:
    files = sorted(STATIC_DIR.iterdir())
    urls = {
        f"{path.name}: {url}"
        for path in files
        for url in _URL.findall(path.read_text())
        if url not in _NAMESPACES
    }

    assert {path.name for path in files} == {filename for filename, _ in ASSETS.values()}
    assert urls == set()


async def test_the_data_endpoint_needs_a_key(http: httpx.AsyncClient) -> None:
    response = await http.get("/dashboard/data")

    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]["message"]
