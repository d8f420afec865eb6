"""Reference parsing and name validation, including hostile names (property tests)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter_store._identity import MAX_NAME_LENGTH
from adapter_store._identity import AdapterRef
from adapter_store._identity import AdapterVersion
from adapter_store._identity import is_version_number
from adapter_store._identity import validate_alias
from adapter_store._identity import validate_base_model_id
from adapter_store._identity import validate_name
from adapter_store.exceptions import InvalidNameError
from adapter_store.exceptions import InvalidReferenceError

_SAFE = string.ascii_letters + string.digits + "._-"
names = st.text(alphabet=_SAFE, min_size=1, max_size=MAX_NAME_LENGTH).filter(
    lambda s: s[0].isalnum() and ".." not in s
)
aliases = names.filter(lambda s: not s.isdigit())
refs = st.one_of(
    st.builds(AdapterRef, names),
    st.builds(AdapterRef, names, version=st.integers(1, 10**9)),
    st.builds(lambda n, a: AdapterRef(n, alias=a), names, aliases),
)


@given(refs)
def test_a_reference_survives_str_and_parse(ref: AdapterRef) -> None:
    assert AdapterRef.parse(str(ref)) == ref


@given(names)
def test_valid_names_are_accepted_unchanged(name: str) -> None:
    assert validate_name(name) == name


@given(
    st.text(min_size=0, max_size=20),
    st.sampled_from(["/", "..", "\\", "\x00", "é", "名", " ", "\n", "%2F", "~"]),
    st.text(min_size=0, max_size=20),
)
def test_hostile_names_are_rejected(prefix: str, hostile: str, suffix: str) -> None:
    name = prefix + hostile + suffix
    with pytest.raises(InvalidNameError):
        validate_name(name)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-flag", "_x", "a" * (MAX_NAME_LENGTH + 1), "a/b", "a..b"]
)
def test_names_breaking_the_rules_are_rejected(name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid adapter name"):
        validate_name(name)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", InvalidReferenceError),
        ("a@0", InvalidReferenceError),
        ("a@x", InvalidReferenceError),
        ("a@", InvalidReferenceError),
        ("a:", InvalidReferenceError),
        ("a@1:prod", InvalidReferenceError),
        ("a:12", InvalidNameError),
        ("../a", InvalidNameError),
        ("a@١", InvalidReferenceError),  # a non-ASCII digit
        ("a@03", InvalidReferenceError),
        ("a@00", InvalidReferenceError),
    ],
)
def test_malformed_references_are_rejected(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        AdapterRef.parse(text)


def test_reference_forms() -> None:
    assert AdapterRef.parse("chat") == AdapterRef("chat")
    assert AdapterRef.parse("chat").selector == "latest"
    assert AdapterRef.parse("chat@3").selector == "3"
    assert AdapterRef.parse("chat:prod").selector == "prod"


def test_latest_is_reserved_for_the_store() -> None:
    assert AdapterRef.parse("chat:latest").alias == "latest"
    with pytest.raises(InvalidNameError, match="reserved"):
        validate_alias("latest")


@pytest.mark.parametrize("base_model", ["tiny", "meta-llama/Llama-3-8B"])
def test_base_model_ids(base_model: str) -> None:
    assert validate_base_model_id(base_model) == base_model


@pytest.mark.parametrize("base_model", ["a/b/c", "../x", "a//b", "/a", ""])
def test_bad_base_model_ids(base_model: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_base_model_id(base_model)


def test_version_identity_is_tenant_name_number() -> None:
    a = AdapterVersion("t", "n", 3, "d1", "c1", 1, 8, "tiny")
    b = AdapterVersion("t", "n", 3, "d2", "c2", 2, 4, "other")
    assert a == b and hash(a) == hash(b)
    assert a.key == "t/n@3"
    assert AdapterVersion.parse_key(a.key) == ("t", "n", 3)


def test_a_version_with_leading_zeros_says_how_to_write_it() -> None:
    with pytest.raises(InvalidReferenceError, match="write chat@3"):
        AdapterRef.parse("chat@03")


@given(st.integers(1, 10**12))
def test_a_canonical_version_key_parses(version: int) -> None:
    assert AdapterVersion.parse_key(f"t/n@{version}") == ("t", "n", version)
    assert is_version_number(str(version))


@given(
    st.one_of(
        st.integers(0, 10**6).map(lambda n: "0" + str(n)),  # leading zero, or "0"
        st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4).filter(
            lambda s: not s.isascii()
        ),
        st.text(min_size=0, max_size=6).filter(lambda s: not (s.isascii() and s.isdigit())),
    )
)
def test_non_canonical_version_keys_are_rejected(ver: str) -> None:
    assert not is_version_number(ver)
    with pytest.raises(InvalidReferenceError):
        AdapterVersion.parse_key(f"t/n@{ver}")


@pytest.mark.parametrize("name", ["bot\n", "0\n", "bot\nother"])
def test_a_trailing_or_embedded_newline_is_not_a_name(name: str) -> None:
    # ``$`` in a regex also matches before a final newline: names must match whole.
    with pytest.raises(InvalidNameError):
        validate_name(name)
