"""The loramux Python SDK: :class:`Client`, :class:`AsyncClient` and the API's wire models.

Light by design: it imports only httpx and pydantic (no torch, Ray, Redis or boto3), so
``pip install loramux`` without the server extras is enough to push adapters and
generate text. The server builds its answers from the same models
(:mod:`._models`), so the two sides cannot drift apart. Errors are
:mod:`services.exceptions`.
"""

from services.client._client import *  # noqa: F403
from services.client._client import __all__ as _client_all
from services.client._models import *  # noqa: F403
from services.client._models import __all__ as _models_all
from services.client._profile import *  # noqa: F403
from services.client._profile import __all__ as _profile_all
from services.client._stats import *  # noqa: F403
from services.client._stats import __all__ as _stats_all

__all__ = [*_client_all, *_models_all, *_profile_all, *_stats_all]
