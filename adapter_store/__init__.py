"""The durable home of every tenant's LoRA adapters: S3 blobs, Redis metadata."""

from adapter_store._identity import *  # noqa: F403
from adapter_store._identity import __all__ as _identity_all
from adapter_store.exceptions import *  # noqa: F403
from adapter_store.exceptions import __all__ as _exceptions_all

__all__ = [*_identity_all, *_exceptions_all]
