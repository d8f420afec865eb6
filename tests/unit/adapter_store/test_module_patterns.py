"""Module regexes: RE2 decides exactly as Python's re (PEFT) on module paths, in linear
time, and what RE2 cannot run is refused with a typed error naming the pattern."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from adapter_store import InvalidConfigError
from adapter_store import UnsupportedPatternError
from adapter_store import parse_lora_config
from adapter_store._module_patterns import ModulePattern
from adapter_store._module_patterns import compile_module_pattern
from adapter_store._peft_config import _LAYERS_PATTERN_TEMPLATE
from adapter_store._peft_config import _PATTERN_KEY_TEMPLATE
from tests.unit.adapter_store.test_validate import within_bound

PATHS = [
    "q_proj",
    "model.layers.0.self_attn.q_proj",
    "model.layers.12.self_attn.v_proj",
    "model.layers.3.block_sparse_moe.experts.1.w1",
    "transformer.h.10.attn.c_attn",
    "model.decoder.layers.2.fc1",
    "a.b",
    "x_1.Y-2.z",
    "lm_head",
]
# Pieces real and hostile patterns are built from: literals, classes, escapes, groups,
# alternation, every kind of repeat, anchors and inline flags.
_TOKENS = [
    "q",
    "proj",
    "_",
    "layers",
    "h",
    "\\.",
    ".",
    ".*",
    ".*?",
    ".+",
    "\\d",
    "\\d+",
    "\\w+",
    "\\W",
    "\\s",
    "\\b",
    "\\B",
    "[a-z]",
    "[^.]",
    "[0-9]+",
    "[._]",
    "[]a]",
    "(",
    ")",
    "(?:",
    "|",
    "*",
    "+",
    "?",
    "{2}",
    "{1,3}",
    "{2,}",
    "^",
    "$",
    "\\A",
    "(?i)",
    "(?i:",
    "(?s)",
    "(?P<n>",
    "Q",
    "12",
    "-",
]
_patterns = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=7).map("".join)
_paths = st.sampled_from(PATHS) | st.text(
    alphabet=st.sampled_from("abqhQ_.019-"), min_size=1, max_size=12
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_patterns, paths=st.lists(_paths, min_size=1, max_size=8))
# Parses only inside PEFT's key template, whose groups it rewrites: found by this test.
@example(pattern=")|(?i:", paths=["q_proj"])
def test_re2_decides_as_pythons_re_for_every_pattern_it_accepts(pattern, paths):
    def compiled(field: str, template: str = "{}") -> ModulePattern | None:
        try:
            return compile_module_pattern(pattern, field, template)
        except (UnsupportedPatternError, InvalidConfigError):
            return None

    plain = compiled("target_modules")
    key = compiled("rank_pattern", _PATTERN_KEY_TEMPLATE)
    layers = compiled("layers_pattern", _LAYERS_PATTERN_TEMPLATE)
    for path in paths:
        # target_modules / exclude_modules: re.fullmatch
        if plain is not None:
            assert plain.fullmatch(path) == (re.fullmatch(pattern, path) is not None), path
        # rank_pattern / alpha_pattern keys: peft.utils.other.get_pattern_key
        if key is not None:
            expected = re.match(rf"(.*\.)?({pattern})$", path) is not None
            assert key.fullmatch(path) == expected, path
        # layers_pattern: the index group of the first match
        if layers is not None:
            found = re.match(_LAYERS_PATTERN_TEMPLATE.format(pattern), path)
            assert layers.match_group(path, "idx") == (found and found.group("idx")), path


def test_patterns_from_real_configs_match_as_in_peft():
    assert compile_module_pattern(r".*\.(q|v)_proj", "t").fullmatch(PATHS[1])
    assert compile_module_pattern(r"(?i)Q_PROJ", "t").fullmatch("q_proj")
    assert not compile_module_pattern(r".*\.(q|v)_proj", "t").fullmatch("model.k_proj")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(q)_proj\1", "uses '\\\\1', which Python's re and RE2 read differently"),
        (r"\12", "uses '\\\\1'"),
        (r"[[:alpha:]]+", "uses '[:'"),
        (r"a{,3}", "uses '{,'"),
        (r"(?=.*q).*", "cannot be matched in linear time (invalid perl operator: (?=)"),
        (r"(?<=x)q", "cannot be matched in linear time (invalid perl operator: (?<=)"),
        (r"(?!x).*", "cannot be matched in linear time"),
        (r"(?>q+)", "cannot be matched in linear time"),
        (r"q*+", "cannot be matched in linear time (bad repetition operator: *+)"),
        (r"q{1001}", "cannot be matched in linear time (invalid repetition size: {1001})"),
        (r"(?x) q", "cannot be matched in linear time"),
        (r"q\Z", "cannot be matched in linear time (invalid escape sequence: \\Z)"),
        ("q_pr\u00f8j", "holds non-ASCII characters"),
        ("q" * 1025, "is 1025 characters, more than 1024"),
        (r"((((((((((q{100}){100}){100}){100}){100}){100}){100}){100}){100}){100})", "linear"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else v,
)
def test_patterns_re2_cannot_run_are_refused_naming_field_and_pattern(pattern, message):
    with pytest.raises(UnsupportedPatternError) as excinfo:
        parse_lora_config(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": pattern}
        )
    text = str(excinfo.value)
    assert message in text
    assert f"target_modules pattern {pattern[:80]!r}"[:-1] in text


@pytest.mark.parametrize("field", ["exclude_modules", "rank_pattern", "alpha_pattern"])
def test_every_pattern_field_is_compiled_by_re2(field):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    config[field] = {r"(?=q)": 4} if field.endswith("pattern") else r"(?=q)"
    with pytest.raises(UnsupportedPatternError, match=f"{field} pattern"):
        parse_lora_config(config)
    layered = {**config, field: None, "layers_to_transform": [0], "layers_pattern": "(?=q)"}
    with pytest.raises(UnsupportedPatternError, match="layers_pattern pattern"):
        parse_lora_config(layered)


def test_python_re_failures_stay_invalid_config_errors():
    with pytest.raises(InvalidConfigError, match="must be a valid regular expression") as exc:
        parse_lora_config(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "(unclosed"}
        )
    assert not isinstance(exc.value, UnsupportedPatternError)


def test_a_backtracking_bomb_matches_in_linear_time():
    bomb = r"([a-z_.0-9]+)*X"  # Python's re: minutes on a 31-character path
    spec = parse_lora_config(
        {
            "peft_type": "LORA",
            "r": 8,
            "lora_alpha": 16,
            "target_modules": bomb,
            "rank_pattern": {bomb: 4},
            "alpha_pattern": {bomb: 4},
        }
    )
    long_path = "model.layers.0.self_attn.q_proj" * 16  # 496 characters

    def match_all() -> None:
        for _ in range(200):
            assert not spec.targets(long_path)
            assert spec.rank_for(long_path) == 8 and spec.alpha_for(long_path) == 16

    within_bound(match_all)


def test_the_largest_pattern_tables_stay_cheap_per_module():
    keys = {f"model.layers.{i}.self_attn.(q|k|v|o)_proj": 4 for i in range(4096)}
    spec = parse_lora_config(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        | {"rank_pattern": keys}
    )
    assert within_bound(lambda: spec.rank_for("model.layers.4095.self_attn.v_proj")) == 4
