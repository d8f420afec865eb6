"""``loramux up --quantize`` refuses, before starting anything, what cannot be served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.engine import ensure_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def up(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["up", *args], env=env)
    return result.exit_code, result.output


def claiming(tiny_dir: Path, target: Path, spec: dict) -> Path:
    shutil.copytree(tiny_dir, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "quantization_config": spec}))
    return target


def test_an_unknown_quantization_is_refused_naming_the_choices(tmp_path: Path) -> None:
    code, output = up("--quantize", "fp8", "--data-dir", str(tmp_path))

    assert code == 1
    assert "invalid setting" in output and "'none', 'nf4' or 'int8'" in output


def test_the_environment_setting_is_checked_too(tmp_path: Path) -> None:
    code, output = up("--data-dir", str(tmp_path), env={"LORAMUX_QUANTIZE": "int4"})

    assert code == 1 and "quantize" in output


@pytest.mark.parametrize(
    ("spec", "asked", "message"),
    [
        ({"quant_method": "awq", "bits": 4}, "none", "AWQ checkpoint"),
        ({"quant_method": "gptq", "bits": 4}, "nf4", "GPTQ checkpoint"),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "nf4", "already quantized"),
    ],
)
def test_a_checkpoint_that_cannot_take_the_quantization_is_refused(
    tiny_dir: Path, tmp_path: Path, spec: dict, asked: str, message: str
) -> None:
    model = claiming(tiny_dir, tmp_path / "model", spec)

    code, output = up(
        *("--base-model", str(model), "--quantize", asked, "--data-dir", str(tmp_path / "d"))
    )

    assert code == 1
    assert output.startswith("error: ") and message in output
    assert not (tmp_path / "d").exists(), "nothing was started"


def test_a_hub_id_is_served_from_the_data_directorys_cache(tiny_dir: Path, tmp_path: Path) -> None:
    from tests.unit.services.engine.test_hub import fake_hub_cache

    model = claiming(tiny_dir, tmp_path / "model", {"quant_method": "awq", "bits": 4})
    fake_hub_cache(tmp_path / "d" / "models", "acme-labs/awq-model", model)

    code, output = up(
        *("--base-model", "acme-labs/awq-model", "--quantize", "none"),
        *("--data-dir", str(tmp_path / "d")),
        env={"HF_HUB_OFFLINE": "1"},
    )

    # The snapshot was found and read: its checkpoint is refused for what it is.
    assert code == 1 and "AWQ checkpoint" in output


def test_a_hub_id_that_cannot_be_fetched_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    code, output = up(
        *("--base-model", "acme-labs/absent", "--data-dir", str(tmp_path / "d")),
        env={"HF_HUB_OFFLINE": "1"},
    )

    assert code == 1
    assert output.startswith("error: --base-model: ") and "'acme-labs/absent'" in output


def test_an_engine_that_cannot_run_here_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    from services.engine import vllm_installed

    unknown = up("--engine", "cuda", "--data-dir", str(tmp_path / "a"))
    vllm = up("--engine", "vllm", "--quantize", "nf4", "--data-dir", str(tmp_path / "b"))

    assert unknown[0] == 1 and "engine" in unknown[1] and "'hf' or 'vllm'" in unknown[1]
    assert vllm[0] == 1
    expected = "'nf4' on engine 'vllm' needs" if vllm_installed() else "--engine vllm needs vLLM"
    assert expected in vllm[1]
    assert not (tmp_path / "b").exists(), "nothing was started"
