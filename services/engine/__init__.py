"""The replica engine: one base model serving many LoRA adapters in one batch.

Plain Python with no Ray in it; ``services`` wraps it in a Ray Serve deployment.
Importing this package imports torch.
"""

from services.engine._backend import *  # noqa: F403
from services.engine._backend import __all__ as _backend_all
from services.engine._base_model import *  # noqa: F403
from services.engine._base_model import __all__ as _base_model_all
from services.engine._cache import *  # noqa: F403
from services.engine._cache import __all__ as _cache_all
from services.engine._engine import *  # noqa: F403
from services.engine._engine import __all__ as _engine_all
from services.engine._engine_options import *  # noqa: F403
from services.engine._engine_options import __all__ as _engine_options_all
from services.engine._grammar import *  # noqa: F403
from services.engine._grammar import __all__ as _grammar_all
from services.engine._host_adapter import *  # noqa: F403
from services.engine._host_adapter import __all__ as _host_adapter_all
from services.engine._lora_layers import *  # noqa: F403
from services.engine._lora_layers import __all__ as _lora_layers_all
from services.engine._quantization import *  # noqa: F403
from services.engine._quantization import __all__ as _quantization_all
from services.engine._requests import *  # noqa: F403
from services.engine._requests import __all__ as _requests_all
from services.engine._sampling import *  # noqa: F403
from services.engine._sampling import __all__ as _sampling_all
from services.engine._sizing import *  # noqa: F403
from services.engine._sizing import __all__ as _sizing_all
from services.engine._tiny import *  # noqa: F403
from services.engine._tiny import __all__ as _tiny_all
from services.engine.exceptions import *  # noqa: F403
from services.engine.exceptions import __all__ as _exceptions_all

__all__ = [
    *_backend_all,
    *_base_model_all,
    *_cache_all,
    *_engine_all,
    *_engine_options_all,
    *_grammar_all,
    *_host_adapter_all,
    *_lora_layers_all,
    *_quantization_all,
    *_requests_all,
    *_sampling_all,
    *_sizing_all,
    *_tiny_all,
    *_exceptions_all,
]
