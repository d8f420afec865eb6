"""What each server-side package exports: a change to a public surface is deliberate.

``services``' light surface (client, wire models, errors) is pinned in
``tests/unit/services/test_light_import.py``.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "adapter_store": {
        "ALL_LINEAR",
        "AdapterFiles",
        "AdapterInfo",
        "AdapterLimits",
        "AdapterNotFoundError",
        "AdapterRef",
        "AdapterStore",
        "AdapterStoreError",
        "AdapterTooLargeError",
        "AdapterVersion",
        "AuthenticationError",
        "BackendUnavailableError",
        "BaseModelManifest",
        "BlobCollectedError",
        "BlobStore",
        "CONFIG_NAME",
        "ConflictError",
        "DiskCache",
        "DiskCacheStats",
        "GcReport",
        "IncompatibleAdapterError",
        "IntegrityError",
        "InvalidAdapterError",
        "InvalidConfigError",
        "InvalidManifestError",
        "InvalidNameError",
        "InvalidReferenceError",
        "LATEST",
        "LocalBlobStore",
        "LoraSpec",
        "MAX_NAME_LENGTH",
        "MalformedWeightsError",
        "ManifestNotFoundError",
        "MetadataStore",
        "ModuleLora",
        "NotFoundError",
        "Page",
        "QuotaExceededError",
        "S3BlobStore",
        "StoreSettings",
        "Tenant",
        "TenantNotFoundError",
        "TenantUsage",
        "UnsafeFormatError",
        "UnsupportedFeatureError",
        "ValidatedAdapter",
        "VersionInfo",
        "WEIGHTS_NAME",
        "blob_key",
        "is_version_number",
        "lora_weight_names",
        "manifest_from_model",
        "open_blob_store",
        "parse_lora_config",
        "read_adapter_source",
        "read_adapter_upload",
        "validate_adapter",
        "validate_alias",
        "validate_base_model_id",
        "validate_name",
    },
    "scheduler": {
        "AdapterDemand",
        "BeladyBound",
        "ClusterView",
        "CostProfile",
        "DemandAwareEviction",
        "DemandTracker",
        "EvictionPolicy",
        "LRUEviction",
        "LoadChanged",
        "NoReplicasError",
        "POLICY_NAMES",
        "PROFILE_NAMES",
        "PlacementPolicy",
        "PolicyOptionError",
        "ReplicaGone",
        "ReplicaSnapshot",
        "ReplicaView",
        "RequestOutcome",
        "ResidencyChanged",
        "SchedulerError",
        "SimConfig",
        "SimResult",
        "SynthSpec",
        "SynthSpecError",
        "Tier",
        "TraceConversion",
        "TraceFormatError",
        "TraceRequest",
        "UnknownPolicyError",
        "UnknownProfileError",
        "UnknownReplicaError",
        "ViewEvent",
        "ViewEventError",
        "ViewStats",
        "belady_bound",
        "convert_alibaba",
        "convert_azure",
        "cost_profile",
        "decode_event",
        "encode_event",
        "make_policy",
        "read_trace",
        "replica_key",
        "residency_channel",
        "select_replica",
        "simulate",
        "snapshot_from_hash",
        "snapshot_to_hash",
        "synthesize",
        "write_trace",
    },
    "services.engine": {
        "AdapterCache",
        "AdapterIncompatibleError",
        "AdapterLease",
        "AdapterLeaseSource",
        "AdapterLoadError",
        "AdapterState",
        "BaseModel",
        "BaseModelLoadError",
        "CacheStats",
        "Engine",
        "EngineError",
        "EngineOverloadedError",
        "FinishReason",
        "GenerationChunk",
        "GenerationRequest",
        "GenerationResult",
        "Grammar",
        "HostAdapter",
        "HostAdapterLike",
        "InvalidRequestError",
        "LatencySummary",
        "LoraSlotLayer",
        "MAX_CHOICES",
        "MAX_LOGPROBS",
        "MultiLoraModel",
        "NO_ADAPTER_SLOT",
        "RequestCancelledError",
        "Residency",
        "ResidencyEvent",
        "SamplingParams",
        "SlotLease",
        "TINY_MODEL_NAME",
        "TierStats",
        "TokenLogprob",
        "TopLogprob",
        "Usage",
        "build_tiny_model",
        "default_models_dir",
        "ensure_tiny_model",
        "load_base_model",
    },
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_package_exports_exactly_its_public_surface(package: str) -> None:
    module = importlib.import_module(package)

    assert set(module.__all__) == PUBLIC[package]
    assert len(module.__all__) == len(set(module.__all__)), "a name is exported twice"
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_exported_objects_live_in_private_modules_or_exceptions(package: str) -> None:
    module = importlib.import_module(package)

    for name in module.__all__:
        origin = getattr(getattr(module, name), "__module__", None)
        if origin is None or not origin.startswith(package + "."):
            continue  # constants and aliases of builtin types carry no module
        leaf = origin.removeprefix(package + ".").split(".")[0]
        assert leaf.startswith("_") or leaf == "exceptions", f"{name} comes from {origin}"
