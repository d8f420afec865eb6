"""Adapter identity: names, references and immutable versions.

A tenant's adapter is ``tenant / name``; each push makes an immutable integer version.
Users name adapters by reference strings: ``name`` (the ``latest`` alias), ``name@3``
(version 3) or ``name:prod`` (the ``prod`` alias). A resolved reference is an
:class:`AdapterVersion`, whose :attr:`AdapterVersion.key` is used as the Redis key part,
the cache key and the routing key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field
from typing import Literal

from adapter_store.exceptions import InvalidNameError
from adapter_store.exceptions import InvalidReferenceError

__all__ = [
    "LATEST",
    "MAX_NAME_LENGTH",
    "AdapterRef",
    "AdapterVersion",
    "Origin",
    "Publication",
    "is_version_number",
    "validate_alias",
    "validate_base_model_id",
    "validate_name",
]

MAX_NAME_LENGTH = 64
LATEST = "latest"
Origin = Literal["pushed", "trained"]
"""How a version came to be: uploaded by its tenant, or trained by the service."""
# A leading alphanumeric and no slash, backslash or ".." keep a name from escaping a
# directory or an S3 prefix, and from being confused with a version number or alias.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RULES = (
    f"1-{MAX_NAME_LENGTH} characters from A-Z a-z 0-9 . _ -, starting with a letter or "
    "digit, without '..'"
)


def is_version_number(text: str) -> bool:
    """Whether ``text`` is a version number written canonically: ASCII digits, no
    leading zero, at least 1. ``"007"`` and ``"٣"`` are not, so one version has one key."""
    return text.isascii() and text.isdigit() and text == str(int(text)) and int(text) >= 1


def validate_name(name: object, kind: str = "adapter") -> str:
    """Return ``name`` if it is a valid tenant/adapter/alias name, else raise.

    Raises:
        InvalidNameError: naming the rule that was broken.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidNameError(f"invalid {kind} name {name!r}: use {_RULES}")
    return name


def validate_alias(alias: object, *, allow_latest: bool = False) -> str:
    """Return ``alias`` if it may name an alias, else raise.

    ``latest`` is moved by the store on every push, so users may not set it; an alias that
    is all digits would read like a version number.

    Raises:
        InvalidNameError: the alias breaks the naming rules or is reserved.
    """
    validate_name(alias, "alias")
    assert isinstance(alias, str)
    if alias.isdigit():
        raise InvalidNameError(
            f"invalid alias {alias!r}: an alias cannot be all digits; use 'name@{alias}' "
            "to name a version"
        )
    if alias == LATEST and not allow_latest:
        raise InvalidNameError(
            "alias 'latest' is reserved: the store moves it to every new version"
        )
    return alias


def validate_base_model_id(base_model: object) -> str:
    """Return ``base_model`` if it may name a base model, else raise.

    A base model id is one name or ``org/name`` (as on the Hugging Face hub), each part
    following the name rules, so that it is safe as a Redis key part and a file name part.

    Raises:
        InvalidNameError: the id is not one or two valid names joined by '/'.
    """
    if not isinstance(base_model, str):
        raise InvalidNameError(f"base model id must be a string, got {type(base_model).__name__}")
    parts = base_model.split("/")
    if len(parts) > 2:
        raise InvalidNameError(f"invalid base model id {base_model!r}: use 'name' or 'org/name'")
    for part in parts:
        validate_name(part, "base model")
    return base_model


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A parsed reference: an adapter name plus at most one of version or alias.

    Equality is textual: ``AdapterRef("a")`` and ``AdapterRef("a", alias="latest")`` are
    different references that may resolve to the same version.
    """

    name: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.version is not None and self.alias is not None:
            raise InvalidReferenceError(
                f"reference to {self.name!r} names both version {self.version} and alias "
                f"{self.alias!r}; give one of them"
            )
        if self.version is not None and (
            isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1
        ):
            raise InvalidReferenceError(f"version must be an integer >= 1, got {self.version!r}")
        if self.alias is not None:
            validate_alias(self.alias, allow_latest=True)

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """Parse ``name``, ``name@3`` or ``name:alias``.

        Raises:
            InvalidReferenceError: the text is not one of the three forms.
            InvalidNameError: the name or alias breaks the naming rules.
        """
        if not isinstance(text, str) or not text:
            raise InvalidReferenceError(
                "empty adapter reference: use 'name', 'name@VERSION' or 'name:ALIAS'"
            )
        if "@" in text and ":" in text:
            raise InvalidReferenceError(
                f"reference {text!r} has both '@' and ':': use 'name@VERSION' or 'name:ALIAS'"
            )
        if "@" in text:
            name, _, ver = text.partition("@")
            if not is_version_number(ver):
                hint = (
                    f"; write {name}@{int(ver)}"
                    if ver.isascii() and ver.isdigit() and int(ver) >= 1
                    else ""
                )
                raise InvalidReferenceError(
                    f"reference {text!r}: the version after '@' must be an integer >= 1 "
                    f"without leading zeros{hint}"
                )
            return cls(validate_name(name), version=int(ver))
        if ":" in text:
            name, _, alias = text.partition(":")
            if not alias:
                raise InvalidReferenceError(f"reference {text!r}: the alias after ':' is empty")
            return cls(validate_name(name), alias=validate_alias(alias, allow_latest=True))
        return cls(validate_name(text))

    @property
    def selector(self) -> str:
        """The alias or version this reference selects, ``latest`` when it names neither."""
        if self.version is not None:
            return str(self.version)
        return self.alias or LATEST

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        return self.name


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    """One immutable, published adapter version.

    Equality and hashing use ``(tenant, name, version)`` only: a published version never
    changes, so the other fields are facts about it, not part of its identity.
    ``digest`` and ``config_digest`` are the sha256 of ``adapter_model.safetensors`` and
    ``adapter_config.json``, the content addresses of its two blobs.
    """

    tenant: str
    name: str
    version: int
    digest: str = field(compare=False)
    config_digest: str = field(compare=False)
    size_bytes: int = field(compare=False)
    rank: int = field(compare=False)
    base_model: str = field(compare=False)
    created_at: float = field(compare=False, default=0.0)
    origin: Origin = field(compare=False, default="pushed")

    @property
    def key(self) -> str:
        """``tenant/name@version``: the cache key and the routing key."""
        return f"{self.tenant}/{self.name}@{self.version}"

    @classmethod
    def parse_key(cls, key: str) -> tuple[str, str, int]:
        """Split a :attr:`key` into ``(tenant, name, version)``.

        Raises:
            InvalidReferenceError: the key is not ``tenant/name@version``.
        """
        tenant, sep, rest = key.partition("/")
        name, at, ver = rest.partition("@")
        if not sep or not at or not is_version_number(ver):
            raise InvalidReferenceError(f"adapter key {key!r} is not 'tenant/name@version'")
        return validate_name(tenant, "tenant"), validate_name(name), int(ver)


@dataclass(frozen=True, slots=True)
class Publication:
    """A version about to be published: what :meth:`MetadataStore.publish` writes.

    ``generations`` are the generations of the ``digest`` and ``config_digest`` blobs
    that ``announce_blobs`` returned; (0, 0) says they were never collected. If gc
    claimed either blob since, the publish fails and writes nothing.
    """

    tenant: str
    name: str
    digest: str
    config_digest: str
    size_bytes: int
    rank: int
    base_model: str
    created_at: float
    generations: tuple[int, int] = (0, 0)
    aliases: tuple[str, ...] = ()
    origin: Origin = "pushed"

    def version(self, number: int) -> AdapterVersion:
        """The version this publication becomes once the store numbered it."""
        return AdapterVersion(
            self.tenant,
            self.name,
            number,
            self.digest,
            self.config_digest,
            self.size_bytes,
            self.rank,
            self.base_model,
            self.created_at,
            self.origin,
        )
