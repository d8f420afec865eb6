"""The dashboard in a real browser: headless Chromium over the whole service.

The module starts the service as ``test_app.py`` does (its ``service`` fixture: local
Ray, Serve, two replicas of the ``tiny`` model, a redis-server, file:// blobs), sends real
completions with a few adapters of two tenants, then loads ``/dashboard`` with the admin
key in the fragment. Chromium runs the page's polling in virtual time and dumps the DOM;
the checks read the data-* attributes the page sets once each chart is drawn. A
screenshot is kept as ``test-artifacts/dashboard.png``.

Chromium is required: without it the test fails and says how to install it (CI's
``.ci/run`` does).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from services.client import Client
from tests.helpers import wait_until

# The whole-service fixture of test_app.py: the same app, in this module's Ray session.
from tests.integration.services.test_app import ADMIN_KEY
from tests.integration.services.test_app import READY_TIMEOUT_S
from tests.integration.services.test_app import Service
from tests.integration.services.test_app import service  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
# Virtual time: the page polls every 2 s, so about 5 samples of the hit rates.
VIRTUAL_TIME_MS = 10_000
CHROMIUM_TIMEOUT_S = 180
# (tenant, adapter, which adapter dir, completions sent)
TRAFFIC = [("dash-a", "support", 0, 3), ("dash-a", "sales", 1, 2), ("dash-b", "bot", 0, 2)]


def chromium() -> str:
    """The Chromium binary. Fails the test (never skips) when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is not installed, and the dashboard test needs a real browser: "
            "install it with `apt-get install -y chromium` (Debian; .ci/run does this)"
        )
    return found


def run_chromium(profile: Path, url: str, *action: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *action,
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


class Dom(HTMLParser):
    """The attributes of every element with an id, and each residency cell's tier."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.body: dict[str, str] = {}
        self.cell_tiers: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "body":
            self.body = values
        if "id" in values:
            self.by_id[values["id"]] = values
        if tag == "td" and "data-tier" in values:
            self.cell_tiers.append(values["data-tier"])

    def number(self, element: str, attribute: str) -> int:
        return int(self.by_id[element][f"data-{attribute}"])


@pytest.fixture(scope="module")
def traffic(service: Service) -> int:  # noqa: F811
    """Two tenants, three adapters, real completions; the number of requests sent."""
    with Client(service.url, ADMIN_KEY, max_retries=0) as admin:
        keys = {tenant: admin.tenants.create(tenant).api_key for tenant in ("dash-a", "dash-b")}
    adapter_dirs = [service.adapter_dir, service.other_adapter_dir]
    sent = 0
    for tenant, name, adapter, count in TRAFFIC:
        with Client(service.url, keys[tenant], max_retries=0, timeout=120) as client:
            # The first adapter is marked as `loramux train --local` marks its pushes.
            origin = "trained" if sent == 0 else "pushed"
            client.adapters.push(adapter_dirs[adapter], name, origin=origin)
            for i in range(count):
                client.completions.create(model=name, prompt=f"Hi {i}", max_tokens=2)
                sent += 1

    def replicas_counted_all() -> bool:
        data = httpx.get(
            f"{service.url}/dashboard/data", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).json()
        return sum(r["requests_served"] for r in data["replicas"]) >= sent

    wait_until(replicas_counted_all, READY_TIMEOUT_S)
    return sent


@pytest.fixture(scope="module")
def dom(service: Service, traffic: int, tmp_path_factory: pytest.TempPathFactory) -> Dom:  # noqa: F811
    profile = tmp_path_factory.mktemp("chromium")
    done = run_chromium(profile, f"{service.url}/dashboard#key={ADMIN_KEY}", "--dump-dom")
    return Dom(done.stdout)


def test_the_page_loaded_its_data(dom: Dom) -> None:
    assert dom.body.get("data-status") == "ok", dom.by_id.get("status")
    assert int(dom.body["data-samples"]) >= 2
    assert dom.by_id["key-form"].get("hidden") is not None  # the fragment's key was used


def test_hit_rate_charts_have_points(dom: Dom) -> None:
    assert dom.number("hit-tiers", "points") > 0
    assert dom.number("hit-tiers", "series") >= 2  # overall and the GPU slot tier
    assert dom.number("hit-replicas", "points") > 0
    assert dom.number("hit-replicas", "series") >= 1


def test_residency_map_shows_both_replicas_and_resident_adapters(dom: Dom) -> None:
    assert dom.number("residency", "replicas") == 2
    assert dom.number("residency", "adapters") >= 1
    assert dom.number("residency", "cells") >= 1
    assert len(dom.cell_tiers) == 2 * dom.number("residency", "adapters")
    assert {"gpu", "host"} & set(dom.cell_tiers)


def test_latency_rankings_and_served_from(dom: Dom, traffic: int) -> None:
    assert dom.number("latency", "bars") >= 1  # each adapter was loaded at least once
    assert dom.number("top-adapters", "rows") == len(TRAFFIC)
    assert dom.number("top-tenants", "rows") == 2
    assert dom.number("served-from", "total") >= traffic
    assert dom.number("replicas", "rows") == 2


def test_routing_decisions_are_counted(dom: Dom) -> None:
    assert dom.by_id["routing"]["data-state"] == "data"
    assert dom.number("routing", "rows") >= 1


def test_each_tenant_row_shows_its_request_limits(dom: Dom) -> None:
    tenants = dom.number("top-tenants", "rows")
    assert tenants >= 2
    assert dom.number("top-tenants", "limits") == tenants
    assert dom.number("top-adapters", "limits") == 0


def test_storage_panel_shows_the_saving(dom: Dom) -> None:
    assert dom.number("storage", "adapters") == len(TRAFFIC)
    assert dom.number("storage", "trained") == 1
    assert dom.number("storage", "versions") == len(TRAFFIC)
    stored = dom.number("storage", "bytes")
    full_copies = dom.number("storage", "full-copies-bytes")
    assert 0 < stored < full_copies
    assert dom.number("storage", "saved-bytes") == full_copies - stored


def test_screenshot_is_saved(service: Service, dom: Dom, tmp_path: Path) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    run_chromium(
        tmp_path / "profile",
        f"{service.url}/dashboard#key={ADMIN_KEY}",
        f"--screenshot={screenshot}",
        "--window-size=1400,1300",
    )

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_chromium_the_test_fails_rather_than_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium()
