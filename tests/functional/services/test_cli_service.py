"""The ``loramux`` commands through a running service (the default, SDK-backed mode).

The real HTTP API (:func:`create_api` over the in-memory metadata and file:// blobs) is
served by uvicorn on a free port in a thread, with the scripted gateway standing in for
the model replicas, so the CLI goes through its real SDK client, env settings and
HTTP; no Ray.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from adapter_store import AdapterStore
from services.cli import app
from services.client import PEFT_FILES
from services.client import ReplicaStats
from services.engine import GenerationChunk
from tests.factories import make_peft_adapter
from tests.factories import tiny_llama
from tests.fakes import ScriptedGateway
from tests.functional.services.conftest import ADMIN_KEY
from tests.functional.services.test_api import DONE

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-service")
    model = tiny_llama()
    return make_peft_adapter(model, root / "a0", seed=0), make_peft_adapter(model, root / "a1")


def make_cli(url: str, home: Path, **env: str) -> Cli:
    """Runs ``loramux ARGS`` with ``env``; HOME is empty (no profile is read), and
    neither LORAMUX_DIRECT nor LORAMUX_ADMIN_KEY is inherited."""
    runner = CliRunner()
    environment: dict[str, str | None] = {
        "LORAMUX_URL": url,
        "HOME": str(home),
        "COLUMNS": "200",  # rich tables wrap cells at the default 80
        "LORAMUX_DIRECT": None,
        "LORAMUX_ADMIN_KEY": None,
        **env,
    }

    def run(*args: object, ok: bool = True, input: str | None = None) -> Result:
        result = runner.invoke(app, [str(a) for a in args], env=environment, input=input)
        assert (result.exit_code == 0) == ok, result.output
        return result

    return run


@pytest.fixture
def acme(service_url: str, store: AdapterStore, tmp_path: Path) -> Cli:
    _, key = store.create_tenant("acme")
    return make_cli(service_url, tmp_path / "home", LORAMUX_API_KEY=key)


def test_adapter_commands_go_through_the_service(
    acme: Cli, store: AdapterStore, adapters: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = adapters

    assert "pushed acme/chat@1" in acme("push", first, "--name", "chat").output
    assert "pushed acme/chat@2" in acme("push", second, "-n", "chat", "-a", "prod").output
    assert store.resolve("acme", "chat:prod").version == 2

    listing = acme("ls").output
    assert "chat" in listing and "prod→2" in listing
    shown = acme("show", "chat:prod").output
    assert "chat:prod -> acme/chat@2  base tiny" in shown
    assert "latest, prod" in shown
    assert "chat:stable -> acme/chat@1" in acme("alias", "chat@1", "stable").output
    assert "removed alias chat:prod" in acme("alias", "chat", "prod", "--remove").output
    assert "prod" not in store.get_adapter("acme", "chat").aliases

    out = tmp_path / "pulled"
    assert f"pulled acme/chat@1 into {out}" in acme("pull", "chat:stable", out).output
    for filename in PEFT_FILES:
        assert (out / filename).read_bytes() == (first / filename).read_bytes()

    assert "deleted 1 version(s) of chat@2" in acme("rm", "chat@2").output
    assert "no live version 2" in acme("show", "chat@2", ok=False).output
    assert "deleted 1 version(s) of chat" in acme("rm", "chat").output
    assert store.list_adapters("acme").items == ()


def test_options_only_the_store_has_are_refused_naming_direct(
    acme: Cli, adapters: tuple[Path, Path]
) -> None:
    refused = [
        acme("ls", "--tenant", "other", ok=False),
        acme("push", adapters[0], "-n", "x", "--base-model", "llama", ok=False),
    ]

    for result in refused:
        assert result.output.startswith("error:") and "--direct" in result.output


def test_generate_streams_or_not_with_the_given_sampling(
    acme: Cli, gateway: ScriptedGateway
) -> None:
    gateway.script = [GenerationChunk("r", "Hi", (72, 105)), DONE]

    streamed = acme("generate", "tiny", "Hello", "--max-tokens", "5", "--temperature", "0")
    whole = acme("generate", "tiny", "Hello", "--no-stream")

    assert streamed.stdout == whole.stdout == "Hi!\n"
    assert [r.prompt for r in gateway.requests] == ["Hello", "Hello"]
    assert [(r.sampling.max_tokens, r.sampling.temperature) for r in gateway.requests] == [
        (5, 0.0),
        (64, 1.0),
    ]


def test_chat_keeps_the_conversation_across_lines_of_stdin(
    acme: Cli, gateway: ScriptedGateway
) -> None:
    gateway.script = [GenerationChunk("r", "Hi", (72, 105)), DONE]

    one = acme("chat", "tiny", "--message", "hello", "--system", "be brief")
    repl = acme("chat", "tiny", input="first\n\nsecond\nexit\nnever sent\n")

    assert one.stdout == "Hi!\n" and repl.stdout == "Hi!\nHi!\n"
    assert list(gateway.requests[0].messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert list(gateway.requests[-1].messages) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "second"},
    ]


def test_stats_prints_each_replica_as_a_table_or_json(
    acme: Cli, gateway: ScriptedGateway, service_url: str, tmp_path: Path
) -> None:
    gateway.replicas = [
        ReplicaStats.model_validate(
            {
                "replica_id": "r-one",
                "residency": {"gpu": ["acme/bot@1", "globex/x@1"]},
                "gpu_slots": 4,
                "engine": "vllm",
                "quantization": "nf4",
                "base_model_bytes": 9_300_000,
                "in_flight": 2,
                "tiers": {"gpu": {"hits": 3, "misses": 1, "hit_ratio": 0.75, "evictions": 0}},
            }
        )
    ]

    table = acme("stats").stdout
    raw = json.loads(acme("stats", "--json").stdout)
    admin = make_cli(service_url, tmp_path / "home", LORAMUX_API_KEY=ADMIN_KEY)

    assert "r-one" in table and "1/4" in table and "vllm nf4 9.3 MB" in table
    # A tenant sees only its own adapters' residency, and none of the counters that
    # sum every tenant's traffic (hit ratios, requests); the admin key sees them.
    assert raw["replicas"][0]["residency"]["gpu"] == ["acme/bot@1"]
    assert "75%" not in table and "in_flight" not in raw["replicas"][0]
    assert "75% of 4" in admin("stats").stdout


def test_tenant_commands_use_the_admin_key(
    service_url: str, store: AdapterStore, adapters: tuple[Path, Path], tmp_path: Path
) -> None:
    admin = make_cli(service_url, tmp_path / "home", LORAMUX_ADMIN_KEY=ADMIN_KEY)

    created = admin("tenant", "create", "globex", "--max-adapters", "1")
    key = created.stdout.strip()
    globex = make_cli(service_url, tmp_path / "home", LORAMUX_API_KEY=key)
    globex("push", adapters[0], "-n", "one")

    assert "globex: 1/1 adapters" in admin("tenant", "usage", "globex").output
    assert "429 quota_exceeded" in globex("push", adapters[0], "-n", "two", ok=False).output
    assert "globex: 1/∞ adapters" in admin("tenant", "quota", "globex").output
    assert "globex" in admin("tenant", "ls").output
    second = admin("tenant", "key", "globex").stdout.strip()
    assert store.tenant_for_key(second) == "globex"
    assert "revoked a key of tenant globex" in admin("tenant", "revoke", key).output
    assert "401 authentication_error" in globex("ls", ok=False).output
    assert "409 conflict" in admin("tenant", "create", "globex", ok=False).output


def test_tenant_limits_are_shown_and_set_through_the_admin_api(
    service_url: str, acme: Cli, store: AdapterStore, tmp_path: Path
) -> None:
    admin = make_cli(service_url, tmp_path / "home", LORAMUX_ADMIN_KEY=ADMIN_KEY)

    shown = admin("tenant", "limits", "acme").output
    admin("tenant", "limits", "acme", "--requests-per-s", "5")
    kept = admin("tenant", "limits", "acme", "--max-in-flight", "2").output
    reset = admin("tenant", "limits", "acme", "--reset").output

    # Unset: the service's defaults (LimitSettings: 50/s, 1e6 tokens/min, 64 in flight).
    assert shown.strip() == (
        "acme: requests_per_s 50 (default), tokens_per_min 1000000 (default), "
        "max_in_flight 64 (default)"
    )
    assert "requests_per_s 5 (own)" in kept and "max_in_flight 2 (own)" in kept
    assert store.get_limits("acme").max_in_flight is None  # reset: the defaults again
    assert "requests_per_s 50 (default)" in reset
    assert "need the admin key" in acme("tenant", "limits", "acme", ok=False).output
    assert "404" in admin("tenant", "limits", "ghost", ok=False).output


def test_errors_are_one_line_with_exit_status_1(
    service_url: str, acme: Cli, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    wrong_key = make_cli(service_url, home, LORAMUX_API_KEY="lmx_wrong")("ls", ok=False)
    not_admin = make_cli(service_url, home, LORAMUX_ADMIN_KEY="not-it")(
        "tenant", "create", "x", ok=False
    )
    no_admin_key = make_cli(service_url, home)("tenant", "usage", "acme", ok=False)
    missing = acme("show", "nothing", ok=False)

    for result in (wrong_key, not_admin, no_admin_key, missing):
        assert result.exit_code == 1
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "401 authentication_error" in wrong_key.output
    assert "403 permission_denied" in not_admin.output
    assert "LORAMUX_ADMIN_KEY" in no_admin_key.output
    assert "404 not_found" in missing.output


def test_an_unreachable_service_says_how_to_start_one(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = make_cli(url, tmp_path, LORAMUX_API_KEY="k")("ls", ok=False)

    assert result.output.startswith(f"error: cannot reach the loramux service at {url}")
    assert "`loramux up`" in result.output and "LORAMUX_URL" in result.output
