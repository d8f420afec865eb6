"""The client install stays light: the SDK imports neither torch, Ray, Redis nor boto3."""

from __future__ import annotations

import json
import subprocess
import sys

import services

HEAVY = ("torch", "ray", "redis", "boto3", "transformers", "peft")


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


def test_the_package_exports_exactly_the_sdk_models_and_errors() -> None:
    assert sorted(services.__all__) == sorted(
        [
            "APIConnectionError",
            "APIError",
            "AdapterInfo",
            "AdapterPage",
            "AdapterVersionInfo",
            "AliasUpdate",
            "AsyncClient",
            "AuthenticationError",
            "BadRequestError",
            "ChatCompletion",
            "ChatCompletionChoice",
            "ChatCompletionChunk",
            "ChatCompletionChunkChoice",
            "ChatCompletionRequest",
            "ChatMessage",
            "ChoiceDelta",
            "ContentPart",
            "FunctionCall",
            "FunctionDefinition",
            "JsonSchemaFormat",
            "NamedToolChoice",
            "ResponseFormat",
            "StreamOptions",
            "ToolCall",
            "ToolCallDelta",
            "ToolDefinition",
            "Client",
            "Completion",
            "CompletionChoice",
            "CompletionRequest",
            "ConfigurationError",
            "ConflictError",
            "Deleted",
            "ErrorBody",
            "ErrorDetail",
            "FinishReason",
            "Health",
            "InternalServerError",
            "InvalidAdapterPathError",
            "KeyRevoke",
            "KeyRevoked",
            "LoramuxError",
            "Model",
            "ModelList",
            "NotFoundError",
            "PayloadTooLargeError",
            "PermissionDeniedError",
            "ProgressCallback",
            "QuotaExceededError",
            "QuotaUpdate",
            "RateLimitError",
            "ServiceUnavailableError",
            "TenantCreate",
            "TenantCreated",
            "TenantUsage",
            "Usage",
        ]
    )
    assert all(hasattr(services, name) for name in services.__all__)
