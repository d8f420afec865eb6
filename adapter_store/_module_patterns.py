"""Module-path regexes from ``adapter_config.json``, matched in linear time by RE2.

PEFT matches ``target_modules``, ``exclude_modules``, ``rank_pattern`` / ``alpha_pattern``
keys and ``layers_pattern`` with Python's backtracking ``re``, where a pattern such as
``(a|aa)*b`` takes exponential time on a 40-character path. Here every such pattern is
compiled by RE2 (``google-re2``), whose matching time is linear in the path length.

Exactness: a pattern is accepted only if Python's ``re`` also compiles it in the form
PEFT builds, so a config PEFT would crash on is refused too; on module paths (non-empty
printable ASCII without spaces, as PyTorch module names are) RE2 then decides the same as
``re.fullmatch`` / ``re.match``, group captures included. The few constructs that both
engines accept but read differently are refused: backslash-digit escapes (backreferences
in ``re``, octal in RE2), ``[:`` (POSIX classes in RE2, literal characters in ``re``),
``{,n}`` (a repeat in ``re``, literal text in RE2), and non-ASCII characters (Unicode
case folding differs in corner cases; module paths are ASCII).

Failure mode: :func:`compile_module_pattern` raises :class:`UnsupportedPatternError`
naming the field and the pattern for anything RE2 cannot run (backreferences,
lookaround, atomic groups, repeats above 1000, programs above a memory cap) or that is
longer than :data:`MAX_PATTERN_CHARS`; :class:`InvalidConfigError` when Python's ``re``
refuses it.
"""

from __future__ import annotations

import re

import re2

from adapter_store.exceptions import InvalidConfigError
from adapter_store.exceptions import UnsupportedPatternError

__all__ = ["MAX_PATTERN_CHARS", "ModulePattern", "compile_module_pattern"]

MAX_PATTERN_CHARS = 1024
# RE2's budget for one compiled program; a pattern whose automaton would be larger is
# refused at compile time rather than slowing every match.
_MAX_PROGRAM_BYTES = 1 << 20
# Constructs both engines accept with different meanings (see the module docstring).
_AMBIGUOUS = re.compile(r"\\[0-9]|\[:|\{,")
_HOW = (
    "use a plain regular expression (alternation, classes, repeats; no backreferences "
    "or lookaround) or list the module names"
)


class ModulePattern:
    """One compiled pattern; ``source`` is the tenant's text, ``template`` how PEFT embeds it.

    ``template`` is a format string with one ``{}`` for the pattern (``"{}"`` for a plain
    ``re.fullmatch``).
    """

    __slots__ = ("_compiled", "source")

    def __init__(self, source: str, compiled: re2._Regexp) -> None:
        self.source = source
        self._compiled = compiled

    def fullmatch(self, path: str) -> bool:
        return self._compiled.fullmatch(path) is not None

    def match_group(self, path: str, group: str) -> str | None:
        """The named group of a match anchored at the start of ``path`` (``re.match``)."""
        found = self._compiled.match(path)
        return None if found is None else found.group(group)

    def __repr__(self) -> str:
        return f"ModulePattern({self.source!r})"


def _re_error(pattern: str) -> Exception | None:
    """Why Python's ``re`` cannot compile ``pattern`` (None: it can)."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        return e
    return None


def compile_module_pattern(pattern: str, field: str, template: str = "{}") -> ModulePattern:
    """Compile ``template.format(pattern)`` with RE2, after checking PEFT could use it.

    Raises:
        UnsupportedPatternError: too long, ambiguous between the engines, or refused by
            RE2; the message names ``field`` and the pattern.
        InvalidConfigError: Python's ``re`` does not compile it (PEFT would fail).
    """
    shown = pattern if len(pattern) <= 80 else pattern[:80] + "..."
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsupportedPatternError(
            f"adapter_config.json: {field} pattern {shown!r} is {len(pattern)} characters, "
            f"more than {MAX_PATTERN_CHARS}; {_HOW}"
        )
    if not pattern.isascii():
        raise UnsupportedPatternError(
            f"adapter_config.json: {field} pattern {shown!r} holds non-ASCII characters; "
            f"module paths are ASCII: {_HOW}"
        )
    ambiguous = _AMBIGUOUS.search(pattern)
    if ambiguous is not None:
        raise UnsupportedPatternError(
            f"adapter_config.json: {field} pattern {shown!r} uses {ambiguous.group()!r}, "
            "which Python's re and RE2 read differently (backreference or octal escape, "
            f"POSIX class, '{{,n}}' repeat); write it another way: {_HOW}"
        )
    full = template.format(pattern)
    if (error := _re_error(full)) is not None:
        raise InvalidConfigError(
            f"adapter_config.json: {field} is {pattern!r}; it must be a valid regular "
            f"expression ({error})"
        ) from error
    # A pattern that parses only inside the template (say ")|(?i:") rewrites the
    # template's own groups, and then the engines can disagree: refuse it.
    if template != "{}" and (error := _re_error(pattern)) is not None:
        raise UnsupportedPatternError(
            f"adapter_config.json: {field} pattern {shown!r} is not a regular expression "
            f"on its own ({error}); balance its groups: {_HOW}"
        ) from error
    options = re2.Options()
    options.max_mem = _MAX_PROGRAM_BYTES
    options.log_errors = False
    try:
        compiled = re2.compile(full, options)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if isinstance(e.args[0], bytes) else e
        raise UnsupportedPatternError(
            f"adapter_config.json: {field} pattern {shown!r} cannot be matched in linear "
            f"time ({reason}): backreferences, lookahead/lookbehind, atomic groups, possessive "
            f"or >1000 repeats and very large patterns are refused; {_HOW}"
        ) from e
    return ModulePattern(pattern, compiled)
