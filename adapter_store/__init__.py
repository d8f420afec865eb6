"""The durable home of every tenant's LoRA adapters: S3 blobs, Redis metadata."""

from adapter_store._blobs import *  # noqa: F403
from adapter_store._blobs import __all__ as _blobs_all
from adapter_store._disk_cache import *  # noqa: F403
from adapter_store._disk_cache import __all__ as _disk_cache_all
from adapter_store._embedded import *  # noqa: F403
from adapter_store._embedded import __all__ as _embedded_all
from adapter_store._identity import *  # noqa: F403
from adapter_store._identity import __all__ as _identity_all
from adapter_store._manifest import *  # noqa: F403
from adapter_store._manifest import __all__ as _manifest_all
from adapter_store._metadata import *  # noqa: F403
from adapter_store._metadata import __all__ as _metadata_all
from adapter_store._metadata_store import *  # noqa: F403
from adapter_store._metadata_store import __all__ as _metadata_store_all
from adapter_store._peft_config import *  # noqa: F403
from adapter_store._peft_config import __all__ as _peft_config_all
from adapter_store._records import *  # noqa: F403
from adapter_store._records import __all__ as _records_all
from adapter_store._settings import *  # noqa: F403
from adapter_store._settings import __all__ as _settings_all
from adapter_store._source import *  # noqa: F403
from adapter_store._source import __all__ as _source_all
from adapter_store._store import *  # noqa: F403
from adapter_store._store import __all__ as _store_all
from adapter_store._validate import *  # noqa: F403
from adapter_store._validate import __all__ as _validate_all
from adapter_store.exceptions import *  # noqa: F403
from adapter_store.exceptions import __all__ as _exceptions_all

__all__ = [
    *_blobs_all,
    *_disk_cache_all,
    *_embedded_all,
    *_identity_all,
    *_manifest_all,
    *_metadata_all,
    *_metadata_store_all,
    *_peft_config_all,
    *_records_all,
    *_settings_all,
    *_source_all,
    *_store_all,
    *_validate_all,
    *_exceptions_all,
]
