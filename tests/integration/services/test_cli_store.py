"""The ``loramux`` commands in direct mode (``--direct`` / ``LORAMUX_DIRECT=1``): on the
store itself, real Redis and file:// blobs, no service running."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.factories import make_peft_adapter
from tests.factories import tiny_llama


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A saved tiny Llama (config only is read) and two PEFT adapters for it."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_llama()
    model.save_pretrained(root / "base")
    return (
        root / "base",
        make_peft_adapter(model, root / "a0", seed=0),
        make_peft_adapter(model, root / "a1", seed=1),
    )


def _cli(env: dict[str, str]):
    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(app, [str(a) for a in args], env=env)
        assert (result.exit_code == 0) == ok, result.output
        return result

    return run


def test_store_commands_end_to_end(
    redis_url: str, tmp_path: Path, model_dirs: tuple[Path, Path, Path]
) -> None:
    from peft import PeftModel

    base_dir, adapter0, adapter1 = model_dirs
    cli = _cli(
        {
            "LORAMUX_DIRECT": "1",
            "LORAMUX_REDIS_URL": redis_url,
            "LORAMUX_DATA_DIR": str(tmp_path / "data"),
            "LORAMUX_BASE_MODEL": "tiny-llama",
        }
    )
    missing = cli("push", adapter0, "--name", "chat", ok=False)
    assert "loramux base register" in missing.output

    assert (
        "registered base model tiny-llama"
        in cli("base", "register", base_dir, "--id", "tiny-llama").output
    )
    assert "pushed default/chat@1" in cli("push", adapter0, "--name", "chat").output
    assert "pushed default/chat@2" in cli("push", adapter1, "-n", "chat", "-a", "prod").output

    listing = cli("ls").output
    assert "chat" in listing and "prod→2" in listing
    assert "chat@1 -> default/chat@1" in cli("show", "chat@1").output
    assert "chat:prod -> default/chat@1" in cli("alias", "chat@1", "prod").output

    out = tmp_path / "pulled"
    assert "pulled default/chat@1" in cli("pull", "chat:prod", out).output
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / filename).read_bytes() == (adapter0 / filename).read_bytes()
    PeftModel.from_pretrained(tiny_llama(), str(out))

    assert "deleted 1 version(s)" in cli("rm", "chat@2").output
    assert "no live version 2" in cli("show", "chat@2", ok=False).output
    assert "deleted 1 blob(s)" in cli("gc", "--grace-s", "0").output
    assert "removed alias chat:prod" in cli("alias", "chat", "prod", "--remove").output


def test_tenant_commands(redis_url: str, tmp_path: Path) -> None:
    # No LORAMUX_ADMIN_KEY and no service: --direct is what makes these work.
    cli = _cli({"LORAMUX_REDIS_URL": redis_url, "LORAMUX_DATA_DIR": str(tmp_path)})
    assert "LORAMUX_ADMIN_KEY" in cli("tenant", "create", "beta", ok=False).output
    created = cli("tenant", "create", "beta", "--max-adapters", "2", "--direct")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("lmx_")
    assert (
        "0/2 adapters" in cli("tenant", "quota", "beta", "--max-adapters", "2", "--direct").output
    )
    assert "beta: 0/2 adapters, 0/∞ bytes" in cli("tenant", "usage", "beta", "--direct").output
    assert "beta" in cli("tenant", "ls", "--direct").output
    assert cli("tenant", "key", "beta", "--direct").output.strip().startswith("lmx_")
    assert "revoked a key of tenant beta" in cli("tenant", "revoke", key, "--direct").output
    revoked_again = cli("tenant", "revoke", key, "--direct", ok=False)
    assert "unknown or already revoked API key" in revoked_again.output
    assert "exists already" in cli("tenant", "create", "beta", "--direct", ok=False).output


def test_embedded_store_persists_between_commands(
    tmp_path: Path, model_dirs: tuple[Path, Path, Path]
) -> None:
    """With no LORAMUX_REDIS_URL each command runs the private appendonly redis-server."""
    base_dir, adapter0, _ = model_dirs
    data = tmp_path / "data"
    cli = _cli(
        {"LORAMUX_DIRECT": "1", "LORAMUX_DATA_DIR": str(data), "LORAMUX_BASE_MODEL": "tiny-llama"}
    )
    cli("base", "register", base_dir, "--id", "tiny-llama")
    cli("push", adapter0, "--name", "chat")
    # Each command started and stopped its own server: what `show` sees was persisted.
    assert "default/chat@1" in cli("show", "chat").output
    port = int((data / "redis" / "redis.port").read_text())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert len([p for p in (data / "blobs").rglob("*") if p.is_file()]) == 2
