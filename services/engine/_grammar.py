"""Structured outputs: a grammar per batch row, enforced on every token with xgrammar.

A :class:`Grammar` is the request's constraint as data (JSON schema, any JSON object, a
regex, a fixed set of choices); it pickles across Ray and is compiled on the replica by
:class:`GrammarCompiler` (xgrammar, the engine vLLM uses, so both backends accept the same
grammars). Each row gets its own :class:`RowGrammar` matcher: before sampling, the tokens
the grammar forbids get ``-inf`` logits in that row only, so one tenant's grammar never
constrains another's row. The row ends when the grammar is complete and emits a stop
token.

JSON grammars also forbid tokens with raw control characters (bytes below 0x20): compact
JSON never contains one, but xgrammar 0.2's rule for length-bounded strings
(``maxLength``) admits them, and a strict parser then refuses the document.

Failure modes: a grammar that does not compile (a schema xgrammar cannot express, a bad
regex) is an :class:`InvalidRequestError` before the request queues. A row can still
end unfinished when it reaches ``max_tokens`` first (``finish_reason`` "length"): the
grammar bounds what is emitted, not how long it takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Literal

import torch

from services.engine.exceptions import InvalidRequestError

__all__ = ["Grammar"]

GrammarKind = Literal["json_object", "json_schema", "regex", "choice"]
# Compile cost grows with the grammar; these caps bound what one request can ask for.
MAX_GRAMMAR_CHARS = 64 * 1024
MAX_CHOICES = 256
# Compact JSON (no free whitespace): a random-weight model can otherwise spend its whole
# token budget on spaces and newlines, and compact output is what clients parse anyway.
_JSON_SEPARATORS = (", ", ": ")


@dataclass(frozen=True, slots=True)
class Grammar:
    """What a row's output must match: ``kind`` and its ``source``.

    ``json_object``: any JSON object (``source`` empty). ``json_schema``: the schema as
    JSON text. ``regex``: the pattern. ``choice``: the options, one per line of a JSON
    list. Build with the class methods.

    Raises:
        InvalidRequestError: on construction, an unknown kind or a source over the caps.
    """

    kind: GrammarKind
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema", "regex", "choice"):
            raise InvalidRequestError(f"grammar kind {self.kind!r} is not one loramux knows")
        if not isinstance(self.source, str) or len(self.source) > MAX_GRAMMAR_CHARS:
            raise InvalidRequestError(
                f"the {self.kind} grammar is over {MAX_GRAMMAR_CHARS} characters; simplify it"
            )

    @classmethod
    def json_object(cls) -> Grammar:
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool) -> Grammar:
        if not isinstance(schema, Mapping | bool):
            raise InvalidRequestError(f"a JSON schema must be an object, got {schema!r}")
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidRequestError(f"guided_regex must be a non-empty string, got {pattern!r}")
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: Iterable[str]) -> Grammar:
        options = list(options)
        if not options or len(options) > MAX_CHOICES:
            raise InvalidRequestError(f"guided_choice needs 1 to {MAX_CHOICES} options")
        if not all(isinstance(o, str) and o for o in options):
            raise InvalidRequestError("guided_choice options must be non-empty strings")
        return cls("choice", json.dumps(options))


@dataclass(frozen=True)
class CompiledGrammar:
    """A compiled grammar and, when some tokens are banned besides, the bitmask words
    (xgrammar's layout) that keep only the others."""

    compiled: Any  # xgrammar.CompiledGrammar
    keep: torch.Tensor | None


def _control_token_ids(decoded_vocab: Sequence[bytes]) -> list[int]:
    return [i for i, token in enumerate(decoded_vocab) if any(b < 0x20 for b in token)]


def json_banned_token_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """The tokens a JSON grammar's row must never emit: those with a raw control
    character (see the module docstring), for engines that ban them by logit bias."""
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    return _control_token_ids(info.decoded_vocab)


class GrammarCompiler:
    """Compiles :class:`Grammar` for one tokenizer; compiled grammars are cached.

    Thread-safe for compiling (xgrammar's compiler is); built lazily by the engine on its
    tokenizer thread the first time a request carries a grammar.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        banned = set(_control_token_ids(info.decoded_vocab))
        self._without_control = _bitmask_words(
            [token not in banned for token in range(len(info.decoded_vocab))], vocab_size
        )

    def compile(self, grammar: Grammar) -> CompiledGrammar:
        """Raises InvalidRequestError naming the grammar when xgrammar refuses it."""
        compiled = self._compile(grammar)
        is_json = grammar.kind in ("json_object", "json_schema")
        return CompiledGrammar(compiled, self._without_control if is_json else None)

    def _compile(self, grammar: Grammar) -> Any:  # -> xgrammar.CompiledGrammar
        compiler = self._compiler
        try:
            if grammar.kind == "json_object":
                return compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, separators=_JSON_SEPARATORS
                )
            if grammar.kind == "json_schema":
                return compiler.compile_json_schema(
                    grammar.source, any_whitespace=False, separators=_JSON_SEPARATORS
                )
            if grammar.kind == "regex":
                return compiler.compile_regex(grammar.source)
            options = json.loads(grammar.source)
            # JSON string literals are valid EBNF string literals (same escapes).
            ebnf = "root ::= " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options)
            return compiler.compile_grammar(ebnf)
        except (RuntimeError, ValueError) as exc:
            raise InvalidRequestError(
                f"the {grammar.kind} constraint cannot be compiled: {exc}"
            ) from exc


class RowGrammar:
    """One row's matcher: which tokens may come next, and the tokens accepted so far."""

    def __init__(self, compiled: CompiledGrammar) -> None:
        import xgrammar

        self._matcher = xgrammar.GrammarMatcher(compiled.compiled)
        self.keep = compiled.keep

    def accept(self, token_id: int) -> bool:
        """Advance by ``token_id``; False when the grammar forbids it."""
        return self._matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted."""
        return self._matcher.is_terminated()


def _bitmask_words(allowed: Sequence[bool], vocab_size: int) -> torch.Tensor:
    """xgrammar's bitmask row (int32 words, token ``32 * w + i`` is bit ``i`` of word
    ``w``) allowing the tokens marked true; tokens past ``allowed`` are allowed."""
    bits = torch.ones(-(-vocab_size // 32) * 32, dtype=torch.int64)
    bits[: len(allowed)] = torch.tensor(allowed, dtype=torch.int64)
    words = (bits.reshape(-1, 32) << torch.arange(32)).sum(-1)
    return words.to(torch.uint32).view(torch.int32)


_batch_matcher: Any = None


def mask_logits(logits: torch.Tensor, grammars: Sequence[RowGrammar | None]) -> None:
    """Set ``-inf`` where each row's grammar forbids a token; rows without one untouched.

    One bitmask for the batch, filled by xgrammar in one call and applied in one call.
    """
    global _batch_matcher
    rows = [i for i, grammar in enumerate(grammars) if grammar is not None]
    if not rows:
        return
    import xgrammar

    if _batch_matcher is None:
        # One thread: the replica's cores belong to the forward pass.
        _batch_matcher = xgrammar.BatchGrammarMatcher(max_threads=1)
    bitmask = xgrammar.allocate_token_bitmask(len(grammars), logits.shape[-1])
    matchers = [grammars[row]._matcher for row in rows]  # type: ignore[union-attr]
    _batch_matcher.batch_fill_next_token_bitmask(matchers, bitmask, indices=rows)
    restricted = [row for row in rows if grammars[row].keep is not None]  # type: ignore[union-attr]
    if restricted:
        # Every row's grammar comes from the engine's one compiler: one keep mask.
        # A tensor index: a list index costs ~50x more on a (32, words) bitmask.
        index = torch.tensor(restricted)
        bitmask[index] &= grammars[restricted[0]].keep  # type: ignore[union-attr]
    xgrammar.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
