"""Fine-tuning LoRA adapters on the service's base model (``loramux train``).

Data parsing is light (pure Python); :func:`train_adapter` needs the ``[server]`` extra
(torch, transformers, peft) and imports it when called. The options and job wire models
live with the API's other models in :mod:`services.client`.
"""

from services.training._data import *  # noqa: F403
from services.training._data import __all__ as _data_all
from services.training._jobs import *  # noqa: F403
from services.training._jobs import __all__ as _jobs_all
from services.training._train import *  # noqa: F403
from services.training._train import __all__ as _train_all
from services.training.exceptions import *  # noqa: F403
from services.training.exceptions import __all__ as _exceptions_all

__all__ = [*_data_all, *_jobs_all, *_train_all, *_exceptions_all]
