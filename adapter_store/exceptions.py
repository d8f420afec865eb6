"""Errors raised by the adapter store.

Every message says what was wrong and how to fix it. The HTTP layer maps each class to
one status code (shown on the right)::

    AdapterStoreError                      base class, never raised directly
    ├── InvalidAdapterError                400  the upload is not an acceptable adapter
    │   ├── UnsafeFormatError              400  pickle weights, path traversal in an archive
    │   ├── MalformedWeightsError          400  bad safetensors header, offsets, dtypes, NaN
    │   ├── InvalidConfigError             400  adapter_config.json missing keys or values
    │   │   └── UnsupportedPatternError    400  a module regex RE2 cannot run in linear
    │   │                                       time (backreference, lookaround, ...)
    │   ├── UnsupportedFeatureError        400  DoRA, modules_to_save, bias, non-LoRA PEFT
    │   ├── IncompatibleAdapterError       400  shapes or modules do not fit the base model
    │   ├── AdapterTooLargeError           413  size or rank above the configured caps
    │   └── ValidationBudgetExceededError  400  validation ran past its wall-clock budget
    ├── InvalidNameError                   400  a tenant, adapter or alias name is not
    │                                           allowed, or the alias is reserved (latest)
    ├── InvalidReferenceError              400  "name", "name@3" or "name:alias" did not parse
    ├── InvalidManifestError               400  a base model manifest is malformed
    ├── NotFoundError                      404
    │   ├── AdapterNotFoundError           404  no such adapter, version or alias
    │   ├── TenantNotFoundError            404  no such tenant
    │   └── ManifestNotFoundError          404  base model manifest not registered
    ├── ConflictError                      409  the tenant exists already
    ├── AuthenticationError                401  unknown or revoked API key
    ├── QuotaExceededError                 429  tenant adapter count or byte quota
    ├── IntegrityError                     502  a blob failed its sha256 check twice
    └── BackendUnavailableError            503  Redis or the blob store did not answer
        │                                       after bounded retries
        ├── BlobCollectedError             503  gc collected a blob a slow push uploaded;
        │                                       nothing was published, push again
        └── LocalDiskError                 503  the local disk cache could not be written
                                                (disk full, read-only, quota)
"""

from __future__ import annotations

__all__ = [
    "AdapterNotFoundError",
    "AdapterStoreError",
    "AdapterTooLargeError",
    "AuthenticationError",
    "BackendUnavailableError",
    "BlobCollectedError",
    "ConflictError",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidAdapterError",
    "InvalidConfigError",
    "InvalidManifestError",
    "InvalidNameError",
    "InvalidReferenceError",
    "LocalDiskError",
    "MalformedWeightsError",
    "ManifestNotFoundError",
    "NotFoundError",
    "QuotaExceededError",
    "TenantNotFoundError",
    "UnsafeFormatError",
    "UnsupportedFeatureError",
    "UnsupportedPatternError",
    "ValidationBudgetExceededError",
]


class AdapterStoreError(Exception):
    """Base class of every error the adapter store raises."""


class InvalidAdapterError(AdapterStoreError):
    """The uploaded files are not an adapter the store accepts."""


class UnsafeFormatError(InvalidAdapterError):
    """The upload uses an unsafe container: pickle weights, archive path traversal."""


class MalformedWeightsError(InvalidAdapterError):
    """adapter_model.safetensors is truncated, inconsistent or holds non-finite values."""


class InvalidConfigError(InvalidAdapterError):
    """adapter_config.json is missing, unparsable, or has missing or invalid values."""


class UnsupportedPatternError(InvalidConfigError):
    """A module regex in adapter_config.json that the linear-time engine (RE2) refuses."""


class UnsupportedFeatureError(InvalidAdapterError):
    """A PEFT feature the serving engine cannot apply exactly (DoRA, modules_to_save...)."""


class IncompatibleAdapterError(InvalidAdapterError):
    """The adapter's modules or shapes do not fit the registered base model."""


class AdapterTooLargeError(InvalidAdapterError):
    """The adapter exceeds the configured size or rank cap."""


class ValidationBudgetExceededError(InvalidAdapterError):
    """Validating the upload took longer than ``AdapterLimits.validation_budget_s``."""


class InvalidNameError(AdapterStoreError, ValueError):
    """A tenant, adapter or alias name breaks the naming rules."""


class InvalidReferenceError(AdapterStoreError, ValueError):
    """An adapter reference string did not parse."""


class InvalidManifestError(AdapterStoreError, ValueError):
    """A base model manifest has missing or invalid module shapes."""


class NotFoundError(AdapterStoreError, LookupError):
    """Something that was asked for does not exist."""


class AdapterNotFoundError(NotFoundError):
    """No such adapter, version or alias for this tenant."""


class TenantNotFoundError(NotFoundError):
    """No such tenant."""


class ManifestNotFoundError(NotFoundError):
    """No manifest is registered for the base model id."""


class ConflictError(AdapterStoreError):
    """The request conflicts with the current state (the tenant exists already)."""


class AuthenticationError(AdapterStoreError):
    """The API key is unknown or revoked."""


class QuotaExceededError(AdapterStoreError):
    """The push would exceed the tenant's adapter count or byte quota."""


class IntegrityError(AdapterStoreError):
    """A blob failed its sha256 check, also after one fresh download."""


class BackendUnavailableError(AdapterStoreError):
    """Redis or the blob store did not answer after bounded retries."""


class BlobCollectedError(BackendUnavailableError):
    """gc claimed a blob after the push announced it; publish wrote nothing."""


class LocalDiskError(BackendUnavailableError):
    """The local disk cache could not be written: no space left, read-only, or quota."""
