"""Base models from the Hugging Face Hub, downloaded once into loramux's models directory.

``--base-model`` takes a hub id (``org/name``) as well as a built-in name or a local
directory. The snapshot goes to ``MODELS_DIR/hub`` in the hub's own cache layout, with the
hub client's progress bars; later starts find it there and need no network. Only
safetensors weights, configs and tokenizer files are fetched: pickled ``.bin`` weights
are never downloaded (a model that has only those needs converting first).

Failure mode: a hub id that is not cached and cannot be downloaded (offline with
``HF_HUB_OFFLINE=1``, no network, a private or misspelt repository) is a
:class:`BaseModelLoadError` naming the id, the cache and the fixes; nothing is half-written
(the hub client downloads to temporary files and renames them into place).
"""

from __future__ import annotations

import re
from pathlib import Path

from services.engine.exceptions import BaseModelLoadError

__all__ = ["hub_model_dir", "is_hub_id"]

# The hub's own rule for repository ids, as loramux's base model ids follow it too.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(value: str) -> bool:
    """Whether ``value`` reads as ``org/name`` and is not a local path that exists."""
    return bool(_HUB_ID.fullmatch(value)) and not Path(value).expanduser().exists()


def hub_model_dir(repo_id: str, models_dir: Path) -> Path:
    """The local snapshot of hub model ``repo_id``, downloaded on first use.

    Raises:
        BaseModelLoadError: not cached and not downloadable (the message says why).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = Path(models_dir) / "hub"
    try:
        return Path(
            snapshot_download(
                repo_id, cache_dir=cache, allow_patterns=_FILES, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        pass  # not cached yet: download it
    try:
        path = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise BaseModelLoadError(
            f"base model {repo_id!r} is not in {cache} and cannot be downloaded from the "
            f"Hugging Face Hub ({type(exc).__name__}: {exc}); check the id and the network "
            "(unset HF_HUB_OFFLINE, set HF_TOKEN for a gated model), or pass a local "
            "directory"
        ) from None
    if not (path / "config.json").is_file():
        raise BaseModelLoadError(
            f"hub model {repo_id!r} has no config.json: it is not a transformers model"
        )
    return path
