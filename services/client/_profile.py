"""The profile file that ``loramux up`` writes and the SDK and CLI read.

``~/.loramux/profile.json`` holds ``{"url", "api_key"}``: where the local service
listens and the dev tenant's key. It is written owner-only and replaced atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from services.exceptions import ConfigurationError

__all__ = ["PROFILE_PATH", "read_profile", "write_profile"]

PROFILE_PATH = Path("~/.loramux/profile.json")


def read_profile(path: Path = PROFILE_PATH) -> dict[str, Any]:
    """The profile at ``path`` (``~`` expanded); ``{}`` when there is none.

    Raises:
        ConfigurationError: the file is unreadable, not JSON, or its ``url`` or
            ``api_key`` is not a string.
    """
    path = path.expanduser()
    if not path.is_file():
        return {}
    try:
        profile = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the loramux profile {path}: {exc}; fix it, delete it, or run "
            "`loramux up` again"
        ) from exc
    if not isinstance(profile, dict) or not all(
        isinstance(profile.get(field, ""), str) for field in ("url", "api_key")
    ):
        raise ConfigurationError(
            f"loramux profile {path} must be a JSON object with string fields 'url' and "
            "'api_key'; fix it, delete it, or run `loramux up` again"
        )
    return profile


def write_profile(url: str, api_key: str, path: Path = PROFILE_PATH) -> Path:
    """Write ``{"url", "api_key"}`` to ``path`` (owner-only, atomically); returns the
    expanded path. Raises OSError when the directory cannot be written."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "api_key": api_key}, f)
    os.replace(partial, path)
    return path
