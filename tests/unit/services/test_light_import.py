"""The client install stays light: the SDK imports neither torch, Ray, Redis nor boto3."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "ray",
    "redis",
    "boto3",
    "botocore",
    "numpy",
    "safetensors",
    "transformers",
    "peft",
)


def test_importing_the_sdk_imports_no_server_dependency() -> None:
    probe = (
        "import json, sys\n"
        "import services, services.client, services.exceptions, services.cli\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )

    assert json.loads(result.stdout) == []


def test_the_client_package_exports_the_sdk_and_wire_models_without_errors() -> None:
    import services.client

    errors = set(services.exceptions.__all__)
    sdk = {"DEFAULT_URL", "PEFT_FILES", "PROFILE_PATH", "read_profile", "write_profile"}

    assert set(services.client.__all__) == (set(services.__all__) - errors) | sdk
