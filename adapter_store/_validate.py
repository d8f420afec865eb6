"""Validation of an adapter's two files, before anything is written anywhere.

:func:`validate_adapter` runs the checks from cheap to expensive: the size cap; the
config (:mod:`adapter_store._peft_config`) and its largest rank; the safetensors header
(:mod:`adapter_store._safetensors`); the tensor names, which must all be PEFT LoRA
matrices ``base_model.model.<module>.lora_A.weight`` (shape ``(r, in_features)``) and
``...lora_B.weight`` (shape ``(out_features, r)``) in a floating dtype; agreement of the
weights with the config (each module in the base model, targeted, with the configured
rank and an effective scaling within ``limits.max_scaling``); that every module the
config targets has weights; a scan of every value for NaN, infinity and magnitudes above
``limits.max_weight_abs``; finally the sha256 digests.

Bounded cost: each step is linear in the size of the files (patterns are matched by
RE2, shapes and counts are capped before use), and the whole run has a wall-clock
budget, ``limits.validation_budget_s``, checked between modules and scan chunks; run it
off the event loop (a thread), as the HTTP API does.

PEFT saves ``fan_in_fan_out`` adapters (GPT-2 ``Conv1D``) with the same A/B shapes as
for ``nn.Linear``; only the base weight is transposed, so the checks are the same.

Failure mode: the first failed check raises its typed error (see
:mod:`adapter_store.exceptions`), :class:`ValidationBudgetExceededError` when the budget
runs out; nothing is returned or written.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from adapter_store._manifest import BaseModelManifest
from adapter_store._peft_config import LoraSpec
from adapter_store._peft_config import parse_lora_config
from adapter_store._safetensors import FLOAT_DTYPES
from adapter_store._safetensors import TensorInfo
from adapter_store._safetensors import check_values
from adapter_store._safetensors import parse_safetensors_header
from adapter_store._source import AdapterFiles
from adapter_store._source import AdapterLimits
from adapter_store.exceptions import AdapterTooLargeError
from adapter_store.exceptions import IncompatibleAdapterError
from adapter_store.exceptions import InvalidConfigError
from adapter_store.exceptions import MalformedWeightsError
from adapter_store.exceptions import UnsupportedFeatureError
from adapter_store.exceptions import ValidationBudgetExceededError

__all__ = ["ModuleLora", "ValidatedAdapter", "lora_weight_names", "validate_adapter"]

_DEFAULT_LIMITS = AdapterLimits()
_PEFT_PREFIX = "base_model.model."
# PyTorch module paths are dotted identifiers; anything else cannot name a base module,
# and keeping paths to printable ASCII keeps RE2's matching identical to Python's re.
_MODULE_PATH = re.compile(r"[!-~]{1,512}")
# Bytes hashed between two budget checks.
_HASH_CHUNK = 64 << 20
_LORA_NAME = re.compile(r"base_model\.model\.(?P<module>.+)\.(?P<part>lora_[AB])\.weight")
_RESAVE = "re-save it with peft_model.save_pretrained(dir)"
# Tensor name fragments of PEFT features the engine does not apply, and why.
_UNSUPPORTED_TENSORS: Mapping[str, str] = MappingProxyType(
    {
        "lora_magnitude_vector": "is a DoRA magnitude vector: DoRA is not supported; merge "
        "the adapter into the base model or retrain with use_dora=False",
        "lora_embedding_": "is an embedding LoRA matrix: LoRA on embedding layers is not "
        "supported; retrain without embedding modules in target_modules",
        ".lora_A.bias": "is a LoRA bias: lora_bias is not supported; retrain with lora_bias=False",
        ".lora_B.bias": "is a LoRA bias: lora_bias is not supported; retrain with lora_bias=False",
        # PEFT copies whole embedding / output-head weights when target_modules names them
        # (or the vocabulary was resized): they would replace the base model's weights.
        ".base_layer.": "is a full copy of a base model weight, which PEFT saves when "
        "target_modules names an embedding layer such as lm_head; a resized vocabulary is "
        "not supported either: re-save with peft_model.save_pretrained(dir, "
        "save_embedding_layers=False)",
    }
)


def lora_weight_names(module: str) -> tuple[str, str]:
    """The safetensors names PEFT gives ``module``'s A and B matrices."""
    return (f"{_PEFT_PREFIX}{module}.lora_A.weight", f"{_PEFT_PREFIX}{module}.lora_B.weight")


@dataclass(frozen=True)
class ModuleLora:
    """One module's LoRA: ``y += scaling * B (A x)`` with A ``(rank, in)``, B ``(out, rank)``."""

    module: str
    rank: int
    in_features: int
    out_features: int
    scaling: float


@dataclass(frozen=True)
class ValidatedAdapter:
    """An adapter that passed every check.

    ``digest`` / ``config_digest`` are the sha256 hex of the weights / config bytes (the
    blobs' content addresses); ``size_bytes`` counts both files; ``max_rank`` is the
    largest module rank.
    """

    files: AdapterFiles
    spec: LoraSpec
    modules: Mapping[str, ModuleLora]
    max_rank: int
    size_bytes: int
    digest: str
    config_digest: str


class _Deadline:
    """The wall-clock budget of one validation, checked between bounded steps."""

    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._end = clock() + budget_s

    def check(self, step: str) -> None:
        if self._clock() > self._end:
            raise ValidationBudgetExceededError(
                f"validating the adapter took more than its budget of {self.budget_s:g} s "
                f"(stopped while {step}); push a smaller adapter (fewer modules, shorter "
                "patterns), or ask the operator to raise validation_budget_s "
                "(LORAMUX_VALIDATION_BUDGET_S)"
            )


def validate_adapter(
    files: AdapterFiles,
    manifest: BaseModelManifest | None,
    limits: AdapterLimits = _DEFAULT_LIMITS,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ValidatedAdapter:
    """Check ``files`` completely; with ``manifest=None`` only the base-model checks are skipped.

    Raises:
        AdapterTooLargeError: above ``limits.max_bytes`` or a rank above ``limits.max_rank``.
        InvalidConfigError: the config is invalid, disagrees with the weights, or gives
            a module a scaling above ``limits.max_scaling``.
        UnsupportedPatternError: a module regex RE2 cannot run in linear time.
        ValidationBudgetExceededError: the checks ran past ``limits.validation_budget_s``.
        UnsupportedFeatureError: DoRA, biases, modules_to_save, embedding LoRA, non-LoRA.
        MalformedWeightsError: a bad safetensors file, tensor, shape or value (NaN,
            infinity, a magnitude above ``limits.max_weight_abs``).
        IncompatibleAdapterError: a module or shape the base model does not have.
    """
    if files.size_bytes > limits.max_bytes:
        raise AdapterTooLargeError(
            f"the adapter is {files.size_bytes} bytes, more than the cap of {limits.max_bytes}; "
            "push a smaller adapter (lower rank, fewer modules, float16/bfloat16 weights)"
        )
    deadline = _Deadline(limits.validation_budget_s, clock)
    spec = parse_lora_config(files.config_bytes)
    if spec.max_rank > limits.max_rank:
        raise AdapterTooLargeError(
            f"adapter_config.json asks for rank {spec.max_rank}, above the cap of "
            f"{limits.max_rank}; retrain with a lower r / rank_pattern"
        )
    deadline.check("parsing adapter_config.json")
    weights = memoryview(files.weights_bytes)  # no copy of a mapped (spooled) file
    header = parse_safetensors_header(
        weights,
        max_header_bytes=limits.max_header_bytes,
        max_tensors=limits.max_tensors,
    )
    deadline.check("parsing the safetensors header")
    modules = {}
    for module, (a, b) in sorted(_pair_tensors(header.tensors).items()):
        modules[module] = _check_module(module, a, b, spec, manifest, limits)
        deadline.check(f"checking module {module!r}")
    if manifest is not None:
        _check_coverage(modules, spec, manifest)
    check_values(
        weights,
        header.tensors,
        limits.max_weight_abs,
        on_chunk=lambda: deadline.check("scanning the weights"),
    )
    return ValidatedAdapter(
        files=files,
        spec=spec,
        modules=MappingProxyType(modules),
        max_rank=max(m.rank for m in modules.values()),
        size_bytes=files.size_bytes,
        digest=_sha256(weights, deadline),
        config_digest=_sha256(files.config_bytes, deadline),
    )


def _sha256(data: bytes | memoryview, deadline: _Deadline) -> str:
    hasher = hashlib.sha256()
    view = memoryview(data)
    for start in range(0, len(data), _HASH_CHUNK):
        hasher.update(view[start : start + _HASH_CHUNK])
        deadline.check("hashing the files")
    return hasher.hexdigest()


def _pair_tensors(tensors: tuple[TensorInfo, ...]) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """Group the tensors into each module's (A, B); refuse any other tensor."""
    parts: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors:
        match = _LORA_NAME.fullmatch(t.name)
        if match is None:
            raise _foreign_tensor(t.name)
        if not _MODULE_PATH.fullmatch(match["module"]):
            raise MalformedWeightsError(
                f"adapter_model.safetensors: tensor {t.name[:600]!r} names a module path "
                "that is not 1-512 printable ASCII characters without spaces, which no "
                f"PyTorch module has; {_RESAVE}"
            )
        parts.setdefault(match["module"], {})[match["part"]] = t
    if not parts:
        raise MalformedWeightsError(
            f"adapter_model.safetensors holds no LoRA tensors; {_RESAVE} after training"
        )
    pairs: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for module, found in parts.items():
        if len(found) != 2:
            (present,) = found
            absent = "lora_B" if present == "lora_A" else "lora_A"
            raise MalformedWeightsError(
                f"adapter_model.safetensors has {present} but no {absent} for module "
                f"{module!r}; the file is incomplete: {_RESAVE}"
            )
        pairs[module] = (found["lora_A"], found["lora_B"])
    return pairs


def _foreign_tensor(name: str) -> Exception:
    for fragment, why in _UNSUPPORTED_TENSORS.items():
        if fragment in name:
            return UnsupportedFeatureError(f"adapter_model.safetensors: tensor {name!r} {why}")
    if name.endswith((".lora_A.weight", ".lora_B.weight")):
        return MalformedWeightsError(
            f"adapter_model.safetensors: tensor {name!r} does not start with "
            f"{_PEFT_PREFIX!r} as PEFT names LoRA weights; {_RESAVE}"
        )
    return UnsupportedFeatureError(
        f"adapter_model.safetensors holds {name!r}, which is not a LoRA A/B matrix (a "
        "trained bias, a modules_to_save copy, or a saved embedding layer?); only LoRA "
        "weights can be swapped per request: retrain with bias='none' and without "
        "modules_to_save, and save with save_embedding_layers=False"
    )


def _check_module(
    module: str,
    a: TensorInfo,
    b: TensorInfo,
    spec: LoraSpec,
    manifest: BaseModelManifest | None,
    limits: AdapterLimits,
) -> ModuleLora:
    for t in (a, b):
        if t.dtype not in FLOAT_DTYPES:
            raise MalformedWeightsError(
                f"tensor {t.name!r} has dtype {t.dtype}; LoRA weights must be floating "
                "point: save them as float32, float16 or bfloat16"
            )
        if len(t.shape) != 2 or 0 in t.shape:
            raise MalformedWeightsError(
                f"tensor {t.name!r} has shape {list(t.shape)}; a LoRA matrix is 2-D and "
                f"non-empty: {_RESAVE}"
            )
    rank, in_features = a.shape
    out_features, b_rank = b.shape
    if rank != b_rank:
        raise MalformedWeightsError(
            f"module {module!r}: lora_A has rank {rank} (shape {list(a.shape)}) but lora_B "
            f"has rank {b_rank} (shape {list(b.shape)}); the file is corrupt: {_RESAVE}"
        )
    if manifest is not None:
        # First, so that a module the base model lacks costs no pattern matching.
        _check_against_base(module, in_features, out_features, manifest)
    if not spec.targets(module):
        raise InvalidConfigError(
            f"adapter_config.json does not match the weights: module {module!r} has LoRA "
            f"weights but target_modules={_shown(spec.target_modules)} does not select it "
            "(mind layers_to_transform and exclude_modules); use the adapter_config.json "
            "saved with these weights"
        )
    configured = spec.rank_for(module)
    if rank != configured:
        raise InvalidConfigError(
            f"adapter_config.json does not match the weights: module {module!r} has rank "
            f"{rank} in the weights but {configured} in the config (r / rank_pattern); use "
            "the adapter_config.json saved with these weights"
        )
    if rank > limits.max_rank:
        raise AdapterTooLargeError(
            f"module {module!r} has rank {rank}, above the cap of {limits.max_rank}; "
            "retrain with a lower r / rank_pattern"
        )
    if manifest is not None and spec.targets_all_linear and module == manifest.output_module:
        raise InvalidConfigError(
            f"adapter_config.json does not match the weights: module {module!r} has LoRA "
            f"weights but it is the output layer of {manifest.base_model!r}, which "
            "target_modules='all-linear' leaves out; name it in target_modules"
        )
    scaling = spec.scaling_for(module)
    if not abs(scaling) <= limits.max_scaling:
        divisor = f"sqrt({rank})" if spec.use_rslora else str(rank)
        raise InvalidConfigError(
            f"adapter_config.json gives module {module!r} a scaling of {scaling:.4g} "
            f"(alpha {spec.alpha_for(module):g} / {divisor}), above the limit of "
            f"{limits.max_scaling:g}; real adapters use well under 100: lower lora_alpha "
            "/ alpha_pattern (and retrain)"
        )
    return ModuleLora(module, rank, in_features, out_features, scaling)


def _shown(targets: tuple[str, ...] | str) -> str:
    return repr(targets if isinstance(targets, str) else list(targets))


def _check_against_base(
    module: str, in_features: int, out_features: int, manifest: BaseModelManifest
) -> None:
    shape = manifest.modules.get(module)
    if shape is None:
        examples = ", ".join(sorted(manifest.modules)[:3])
        raise IncompatibleAdapterError(
            f"base model {manifest.base_model!r} has no linear module {module!r} (from "
            f"tensor {lora_weight_names(module)[0]!r}); its modules look like {examples}: "
            "push an adapter trained on this base model, or name the right base model"
        )
    if (in_features, out_features) != shape:
        raise IncompatibleAdapterError(
            f"module {module!r} of base model {manifest.base_model!r} maps {shape[0]} -> "
            f"{shape[1]} features, but the adapter's LoRA maps {in_features} -> "
            f"{out_features}; push an adapter trained on this base model"
        )


def _check_coverage(
    modules: Mapping[str, ModuleLora], spec: LoraSpec, manifest: BaseModelManifest
) -> None:
    missing = [m for m in manifest.modules_targeted_by(spec) if m not in modules]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise MalformedWeightsError(
            f"adapter_config.json targets module {missing[0]!r}{more} of base model "
            f"{manifest.base_model!r}, but adapter_model.safetensors has no LoRA weights "
            f"for it; the file is incomplete or the config was edited: {_RESAVE}"
        )
