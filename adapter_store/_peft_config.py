"""PEFT LoRA ``adapter_config.json``: parsing and the exact PEFT semantics of its fields.

This module is the project's one source of truth for what a LoRA config means: which
modules it targets, the rank and alpha of each, and the resulting scaling. Each rule
mirrors PEFT 0.21 (``peft/tuners/tuners_utils.py: check_target_module_exists``,
``peft/utils/other.py: get_pattern_key``, ``peft/tuners/lora/layer.py: update_layer``),
so an adapter behaves here as it does under ``PeftModel.from_pretrained``.

Policy: the fields that decide the LoRA product are required or checked; the many
training-only fields PEFT writes (dropout, init method, loftq/eva/corda settings...) are
ignored; any feature that changes inference beyond plain LoRA (DoRA and the other LoRA
variants, trained biases, ``modules_to_save``, non-LoRA PEFT types) is rejected, because
a serving engine that skipped it would silently compute something else.

Failure mode: :func:`parse_lora_config` raises :class:`InvalidConfigError` for missing or
ill-typed values and :class:`UnsupportedFeatureError` for features the engine cannot
apply; both messages say how to fix the config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType
from typing import Any

from adapter_store._module_patterns import ModulePattern
from adapter_store._module_patterns import compile_module_pattern
from adapter_store.exceptions import InvalidConfigError
from adapter_store.exceptions import UnsupportedFeatureError
from adapter_store.exceptions import UnsupportedPatternError

__all__ = ["ALL_LINEAR", "LoraSpec", "parse_lora_config"]

# PEFT's shorthand for "every linear layer but the output head" (compared lower-cased).
ALL_LINEAR = "all-linear"
MAX_CONFIG_BYTES = 1 << 20

# Fields that switch on behaviour beyond ``W x + scaling * B A x``, each with the reason
# it is refused. A field counts as "on" when its value is truthy.
_UNSUPPORTED_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "use_dora": "DoRA (use_dora) adds a learned magnitude vector that the engine does "
        "not apply; merge the adapter into the base model or retrain with use_dora=False",
        "modules_to_save": "modules_to_save stores fully trained copies of whole modules, "
        "which are not low-rank and cannot be swapped per request; retrain without "
        "modules_to_save",
        "lora_bias": "lora_bias trains a bias on lora_B that the engine does not apply; "
        "retrain with lora_bias=False",
        "target_parameters": "target_parameters applies LoRA to raw parameters (e.g. MoE "
        "experts), which the engine does not support; retrain with target_modules instead",
        "layer_replication": "layer_replication changes the base model's layer stack; "
        "retrain without layer_replication",
        "trainable_token_indices": "trainable_token_indices trains embedding rows, which "
        "the engine does not apply; retrain without it",
        "alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens) is not "
        "supported; retrain as a plain LoRA adapter",
        "use_qalora": "QA-LoRA (use_qalora) is not supported; retrain with use_qalora=False",
        "velora_config": "VeLoRA (velora_config) is not supported; retrain as a plain LoRA adapter",
        "monteclora_config": "MonteCLoRA (monteclora_config) is not supported; retrain as a "
        "plain LoRA adapter",
        "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported; retrain as a "
        "plain LoRA adapter",
        "arrow_config": "Arrow routing (arrow_config) is not supported; push each expert "
        "adapter on its own",
        "kasa_config": "KaSA (kasa_config) is not supported; retrain as a plain LoRA adapter",
        "megatron_config": "Megatron-parallel LoRA (megatron_config) is not supported; "
        "save the adapter from a non-Megatron model",
    }
)
_SAVE_HINT = "save it with peft's model.save_pretrained(dir)"


# How PEFT embeds each kind of pattern (``get_pattern_key`` for rank/alpha keys, the
# layer-index lookup for layers_pattern); the lazy ``.*?`` picks the first numbered
# segment, so an expert index nested inside a layer is not mistaken for the layer index.
_PATTERN_KEY_TEMPLATE = r"(.*\.)?({})$"
_LAYERS_PATTERN_TEMPLATE = r"(?:^|.*?\.){}\.(?P<idx>\d+)\."
_DEFAULT_LAYER = compile_module_pattern(
    r"[^.]*", "the default layers_pattern", r".*?\.{}\.(?P<idx>\d+)\."
)
# Bounds on what a config may list, far above real configs (EVA writes one rank_pattern
# entry per module: 560 for a 70B Llama), so that matching stays cheap.
MAX_PATTERN_KEYS = 4096
MAX_LIST_ITEMS = 65_536
# Bounds on numbers, checked before any conversion (a 400-digit integer cannot become a
# float); the push caps in AdapterLimits are far tighter.
MAX_RANK_VALUE = 1 << 20
MAX_ALPHA_ABS = 1e6


def _first_matching(keys: tuple[ModulePattern, ...], module_path: str) -> str | None:
    """``peft.utils.other.get_pattern_key``: the first key that matches a name suffix."""
    for key in keys:
        if key.fullmatch(module_path):
            return key.source
    return None


def _name_suffixes(module_path: str) -> list[str]:
    """The path and each part after a ``.``: ``a.b.c`` -> ``a.b.c``, ``b.c``, ``c``.

    ``path == name or path.endswith("." + name)`` holds exactly when ``name`` is one of
    them, so a list of names is matched with set lookups instead of a scan.
    """
    return [module_path, *(module_path[i + 1 :] for i, c in enumerate(module_path) if c == ".")]


@dataclass(frozen=True)
class LoraSpec:
    """A parsed ``adapter_config.json``: what the engine needs to apply the adapter.

    ``target_modules`` is a tuple of names (a module matches when its path equals one or
    ends with ``"." + name``), a regex string (``re.fullmatch`` against the path), or
    :data:`ALL_LINEAR`. ``rank_pattern`` / ``alpha_pattern`` keep the file's order,
    which decides ties as in PEFT. Module paths are names in the base model's
    ``named_modules()`` (e.g. ``model.layers.0.self_attn.q_proj``), as in the manifest.
    """

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    alpha_pattern: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    fan_in_fan_out: bool = False
    layers_to_transform: tuple[int, ...] | None = None
    layers_pattern: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] | str | None = None
    base_model_name_or_path: str | None = None
    # Compiled forms (RE2 patterns, sets of names), built once in __post_init__.
    _matchers: _Matchers = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Compile every pattern with RE2.

        Raises:
            UnsupportedPatternError, InvalidConfigError: a pattern RE2 or Python's ``re``
                refuses (see :mod:`adapter_store._module_patterns`).
        """
        object.__setattr__(self, "_matchers", _Matchers.build(self))

    @property
    def targets_all_linear(self) -> bool:
        return self.target_modules == ALL_LINEAR

    def targets(self, module_path: str) -> bool:
        """Whether PEFT would put a LoRA layer on the module at ``module_path``.

        For :data:`ALL_LINEAR` every path is a target: which modules are linear and
        which one is the output head is known only from the base model, so pass paths
        from ``BaseModelManifest.modules_targeted_by``, which applies that rule.
        """
        m = self._matchers
        if m.excluded(module_path):
            return False
        if self.target_modules == ALL_LINEAR:
            return True
        if m.target_regex is not None:
            return m.target_regex.fullmatch(module_path)
        if module_path in m.target_names:
            # PEFT applies layers_to_transform only to suffix matches, not exact names.
            return True
        if m.target_names.isdisjoint(_name_suffixes(module_path)[1:]):
            return False
        if m.layers is None:
            return True
        index = m.layer_index(module_path)
        return index is not None and index in m.layers

    def rank_for(self, module_path: str) -> int:
        """The module's rank: the first matching ``rank_pattern`` entry, else ``r``."""
        key = _first_matching(self._matchers.rank_keys, module_path)
        return self.r if key is None else self.rank_pattern[key]

    def alpha_for(self, module_path: str) -> float:
        """The module's alpha: the first matching ``alpha_pattern`` entry, else ``lora_alpha``."""
        key = _first_matching(self._matchers.alpha_keys, module_path)
        return self.lora_alpha if key is None else self.alpha_pattern[key]

    def scaling_for(self, module_path: str) -> float:
        """The factor on ``B A x``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        rank = self.rank_for(module_path)
        alpha = self.alpha_for(module_path)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    @property
    def max_rank(self) -> int:
        """The largest rank any module can get: ``r`` or a ``rank_pattern`` value."""
        return max([self.r, *self.rank_pattern.values()])


@dataclass(frozen=True, slots=True)
class _Matchers:
    """A :class:`LoraSpec`'s patterns in the forms that match in bounded time."""

    target_regex: ModulePattern | None
    target_names: frozenset[str]
    exclude_regex: ModulePattern | None
    exclude_names: frozenset[str]
    rank_keys: tuple[ModulePattern, ...]
    alpha_keys: tuple[ModulePattern, ...]
    layers: frozenset[int] | None
    layers_patterns: tuple[ModulePattern, ...]

    @classmethod
    def build(cls, spec: LoraSpec) -> _Matchers:
        targets, excluded = spec.target_modules, spec.exclude_modules
        regex_target = isinstance(targets, str) and targets != ALL_LINEAR
        return cls(
            target_regex=compile_module_pattern(targets, "target_modules")
            if regex_target
            else None,
            target_names=frozenset(() if isinstance(targets, str) else targets),
            exclude_regex=compile_module_pattern(excluded, "exclude_modules")
            if isinstance(excluded, str)
            else None,
            exclude_names=frozenset(() if isinstance(excluded, str) else excluded or ()),
            rank_keys=_pattern_keys(spec.rank_pattern, "rank_pattern"),
            alpha_keys=_pattern_keys(spec.alpha_pattern, "alpha_pattern"),
            layers=None
            if spec.layers_to_transform is None
            else frozenset(spec.layers_to_transform),
            layers_patterns=tuple(
                compile_module_pattern(p, "layers_pattern", _LAYERS_PATTERN_TEMPLATE)
                for p in spec.layers_pattern
            ),
        )

    def excluded(self, module_path: str) -> bool:
        if self.exclude_regex is not None:
            return self.exclude_regex.fullmatch(module_path)
        return not self.exclude_names.isdisjoint(_name_suffixes(module_path))

    def layer_index(self, module_path: str) -> int | None:
        """The layer number PEFT reads from ``module_path`` (None: no number found)."""
        for pattern in self.layers_patterns or (_DEFAULT_LAYER,):
            found = pattern.match_group(module_path, "idx")
            if found is not None:
                return int(found)
        return None


def _pattern_keys(patterns: Mapping[str, object], name: str) -> tuple[ModulePattern, ...]:
    if len(patterns) > MAX_PATTERN_KEYS:
        raise UnsupportedPatternError(
            f"adapter_config.json: {name} has {len(patterns)} entries, more than "
            f"{MAX_PATTERN_KEYS}; group modules with one regex per rank or alpha"
        )
    return tuple(compile_module_pattern(key, name, _PATTERN_KEY_TEMPLATE) for key in patterns)


def parse_lora_config(data: bytes | Mapping[str, Any]) -> LoraSpec:
    """Parse ``adapter_config.json`` (its bytes, or the decoded object).

    Requires ``peft_type``, ``r``, ``lora_alpha`` and ``target_modules``; ignores fields
    that only matter for training.

    Raises:
        InvalidConfigError: not JSON, a required field missing, a value of the wrong
            type or range, a pattern that is not a valid regex.
        UnsupportedFeatureError: a PEFT type other than LORA, or a LoRA feature the
            engine cannot apply (see ``_UNSUPPORTED_FIELDS``), or ``bias`` not "none".
    """
    config = _decode(data) if isinstance(data, bytes | bytearray | memoryview) else data
    if not isinstance(config, Mapping):
        raise InvalidConfigError(
            f"adapter_config.json must hold a JSON object, got {type(config).__name__}; "
            + _SAVE_HINT
        )
    _require(config, "peft_type")
    peft_type = config["peft_type"]
    if peft_type != "LORA":
        raise UnsupportedFeatureError(
            f"adapter_config.json has peft_type {peft_type!r}: only LoRA adapters "
            "(peft_type 'LORA') are supported; train the adapter with peft.LoraConfig"
        )
    for name, why in _UNSUPPORTED_FIELDS.items():
        if config.get(name):
            raise UnsupportedFeatureError(f"adapter_config.json: {why}")
    bias = config.get("bias", "none")
    if bias != "none":
        raise UnsupportedFeatureError(
            f"adapter_config.json has bias={bias!r}: trained biases are part of the base "
            "model's weights and cannot be swapped per request; retrain with bias='none'"
        )
    for name in ("r", "lora_alpha", "target_modules"):
        _require(config, name)
    targets = _target_modules(config["target_modules"])
    layers_to_transform = _layers_to_transform(config.get("layers_to_transform"))
    layers_pattern = _str_list(config.get("layers_pattern"), "layers_pattern")
    if isinstance(targets, str) and (layers_to_transform is not None or layers_pattern):
        raise InvalidConfigError(
            "adapter_config.json: layers_to_transform and layers_pattern cannot be used "
            "with a regex target_modules (PEFT refuses it); put the layer filter in the regex"
        )
    if layers_pattern and layers_to_transform is None:
        raise InvalidConfigError(
            "adapter_config.json: layers_pattern is set without layers_to_transform; "
            "set both or neither"
        )
    exclude = config.get("exclude_modules")
    return LoraSpec(
        r=_rank(config["r"], "r"),
        lora_alpha=_alpha(config["lora_alpha"], "lora_alpha"),
        target_modules=targets,
        use_rslora=_bool(config, "use_rslora"),
        rank_pattern=_patterns(config.get("rank_pattern"), "rank_pattern", _rank),
        alpha_pattern=_patterns(config.get("alpha_pattern"), "alpha_pattern", _alpha),
        fan_in_fan_out=_bool(config, "fan_in_fan_out"),
        layers_to_transform=layers_to_transform,
        layers_pattern=layers_pattern,
        exclude_modules=(
            exclude if isinstance(exclude, str) else _str_list(exclude, "exclude_modules") or None
        ),
        base_model_name_or_path=_optional_str(config, "base_model_name_or_path"),
    )


def _decode(data: bytes | bytearray | memoryview) -> Any:
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidConfigError(
            f"adapter_config.json is {len(data)} bytes, more than {MAX_CONFIG_BYTES}: "
            "a LoRA config is a few KiB; " + _SAVE_HINT
        )
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidConfigError(
            f"adapter_config.json is not valid UTF-8 JSON ({e}); " + _SAVE_HINT
        ) from e


def _require(config: Mapping[str, Any], name: str) -> None:
    if config.get(name) is None:
        raise InvalidConfigError(
            f"adapter_config.json is missing {name!r}; add it, or {_SAVE_HINT} which "
            "writes every field"
        )


def _bad(name: str, value: object, expected: str) -> InvalidConfigError:
    return InvalidConfigError(
        f"adapter_config.json: {name} is {_shown_value(value)}; it must be {expected}: "
        f"fix it, or {_SAVE_HINT}"
    )


def _shown_value(value: object) -> str:
    """``repr`` cut to a readable length; huge integers by their size (their decimal
    form is slow to compute, and refused above 4300 digits)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    shown = repr(value)
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _rank(value: object, name: str) -> int:
    # Integer comparisons are exact for any size: no conversion happens before the bound.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK_VALUE:
        raise _bad(name, value, f"an integer in [1, {MAX_RANK_VALUE}]")
    return value


def _alpha(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or not -MAX_ALPHA_ABS <= value <= MAX_ALPHA_ABS
    ):
        raise _bad(name, value, f"a finite number in [-{MAX_ALPHA_ABS:g}, {MAX_ALPHA_ABS:g}]")
    return float(value)


def _bool(config: Mapping[str, Any], name: str) -> bool:
    value = config.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, value, "true or false")
    return value


def _optional_str(config: Mapping[str, Any], name: str) -> str | None:
    value = config.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(name, value, "a string or null")
    return value


def _str_list(value: object, name: str) -> tuple[str, ...]:
    """None, a string, or a list of strings, as a tuple."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise _bad(name, value, "a non-empty string or a list of them")
    if len(items) > MAX_LIST_ITEMS:
        raise _bad(name, value, f"a list of at most {MAX_LIST_ITEMS} names")
    return tuple(items)


def _target_modules(value: object) -> tuple[str, ...] | str:
    if isinstance(value, str):
        if value.lower() == ALL_LINEAR:
            return ALL_LINEAR
        return value
    names = _str_list(value, "target_modules")
    if not names:
        raise _bad("target_modules", value, "a non-empty list of module names or a regex")
    return names


def _layers_to_transform(value: object) -> tuple[int, ...] | None:
    # PEFT accepts one index or a list; an empty list means "no filter".
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if items is None or items == []:
        return None
    if (
        not isinstance(items, list)
        or len(items) > MAX_LIST_ITEMS
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_RANK_VALUE
            for i in items
        )
    ):
        raise _bad(
            "layers_to_transform",
            value,
            f"a layer index in [0, {MAX_RANK_VALUE}] or a list of at most {MAX_LIST_ITEMS}",
        )
    return tuple(items)


def _patterns(value: object, name: str, parse_value: Any) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise _bad(name, value, "an object mapping module names or regexes to values")
    parsed: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise _bad(name, value, "keyed by non-empty module names or regexes")
        parsed[key] = parse_value(item, f"{name}[{_shown_value(key)}]")
    return MappingProxyType(parsed)
