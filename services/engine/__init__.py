"""The replica engine: one base model serving many LoRA adapters in one batch.

Plain Python with no Ray in it; ``services`` wraps it in a Ray Serve deployment.
Importing this package imports torch.
"""

from services.engine.exceptions import *  # noqa: F403
from services.engine.exceptions import __all__ as _exceptions_all

__all__ = [*_exceptions_all]
