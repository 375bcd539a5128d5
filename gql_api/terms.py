"""Blocked terms: whether a chat message contains one of the terms a stream's chat refuses.

Terms and messages are compared after the same normalisation, ``normalize``: Unicode NFKC,
which folds compatibility forms (full-width letters, ligatures, superscripts) into their
plain letters, then case folding (``ß`` matches ``ss``). A message contains a term when the
normalised term is a substring of the normalised message, so a term also matches inside a
longer word: ``bad`` refuses ``badge`` (the owner chooses terms knowing this).

A ``BlockedTerms`` is built once per list of terms (``blocked_terms`` keeps the most recent
ones), so a send does not normalise hundreds of terms again: it normalises its message and runs
one compiled alternation over it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache


def normalize(text: str) -> str:
    """``text`` as terms are compared: NFKC, then case-folded."""
    # Case folding can produce characters NFKC would change again (rarely): normalise after too.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


class BlockedTerms:
    """A set of blocked terms, normalised and compiled once."""

    def __init__(self, terms: Iterable[str]) -> None:
        normalized = {normalize(term) for term in terms} - {""}
        # Longest first, so the alternation's first match is never cut short by a shorter term
        # (the outcome is the same either way; the order only keeps the scan's work predictable).
        alternatives = sorted(normalized, key=lambda term: (-len(term), term))
        self._pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def found_in(self, text: str) -> bool:
        """Whether ``text`` contains one of the terms, compared normalised."""
        return self._pattern is not None and self._pattern.search(normalize(text)) is not None


@lru_cache(maxsize=1024)
def blocked_terms(terms: tuple[str, ...]) -> BlockedTerms:
    """The matcher of these terms, built once per distinct list (streams repeat theirs on every send)."""
    return BlockedTerms(terms)
