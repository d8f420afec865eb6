"""Incremental detokenization with stop strings, for streaming text out token by token.

Two things make per-token text deltas non-trivial: a token may end inside a multi-byte
UTF-8 character (the tokenizer then decodes a replacement character), and text that might
be the start of a stop string cannot be sent until it is known not to be one. Both are
held back until resolved; :meth:`TextStream.finish` releases whatever is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TextStream"]

_REPLACEMENT = "\ufffd"


class TextStream:
    """Turns generated token ids into text deltas and detects stop strings.

    Decoding uses a sliding window (as vLLM and TGI do): only the tokens since the last
    complete character are re-decoded, so each step costs O(1) in the output length.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: tokens before it are fully decoded text
        self._read_offset = 0  # tokens before it have been turned into text
        self._text = ""  # all decoded text so far
        self._sent = 0  # characters of _text already returned
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be sent now ("" if held back).

        After a stop string is found, :attr:`stopped` is true and the returned text ends
        just before it.
        """
        if self.stopped:
            return ""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self._text += after[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Return the text still held back (incomplete characters included)."""
        if not self.stopped:
            window = self._ids[self._prefix_offset :]
            before = self._decode(self._ids[self._prefix_offset : self._read_offset])
            self._text += self._decode(window)[len(before) :]
            self._read_offset = len(self._ids)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self.stopped:
            return ""
        # A stop string may straddle the previous delta, so search a little before it.
        longest = max((len(s) for s in self._stop), default=0)
        search_from = max(0, self._sent - longest + 1)
        hits = [i for s in self._stop if (i := self._text.find(s, search_from)) >= 0]
        if hits:
            end = min(hits)
            self.stopped = True
        elif final:
            end = len(self._text)
        else:
            end = len(self._text) - self._partial_stop_suffix()
        delta = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return delta

    def _partial_stop_suffix(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        text = self._text
        best = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
