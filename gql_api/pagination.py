"""Cursor pagination over a stream's messages, keyed on the per-stream sequence number."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Generic, TypeVar

from gql_api.errors import BadUserInput

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
_CURSOR_PREFIX = "seq:"

T = TypeVar("T")


def encode_cursor(seq: int) -> str:
    """An opaque cursor for the message with this sequence number."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, argument: str = "cursor") -> int:
    """The sequence number a cursor names; BadUserInput when it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        seq = int(text.removeprefix(_CURSOR_PREFIX))
        # MongoDB integers are 64-bit: a larger number cannot name a message.
        if not 0 <= seq < 2**63 or str(seq) != text.removeprefix(_CURSOR_PREFIX):
            raise ValueError(text)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise BadUserInput(f"Validation failed: `{argument}` is not a valid cursor") from exc
    return seq


@dataclass(frozen=True)
class PageRequest:
    """A validated window: messages with ``after < seq < before``, ``limit`` of them, from one end.

    ``from_end`` means the window is taken from its newest end (``last``), else its oldest (``first``).
    """

    limit: int
    from_end: bool
    after: int | None = None
    before: int | None = None

    @classmethod
    def from_relay(
        cls,
        *,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> PageRequest:
        """Validate Relay connection arguments. No arguments: the newest page."""
        if first is not None and last is not None:
            raise BadUserInput("Validation failed: pass either `first` or `last`, not both")
        for name, value in (("first", first), ("last", last)):
            if value is not None and not 1 <= value <= MAX_PAGE_SIZE:
                raise BadUserInput(f"Validation failed: `{name}` must be 1 to {MAX_PAGE_SIZE}")
        after_seq = decode_cursor(after, argument="after") if after is not None else None
        before_seq = decode_cursor(before, argument="before") if before is not None else None
        if first is not None:
            return cls(first, False, after_seq, before_seq)
        if last is not None:
            return cls(last, True, after_seq, before_seq)
        # Only `after`: read forward from it; otherwise the newest messages.
        from_end = after_seq is None
        return cls(DEFAULT_PAGE_SIZE, from_end, after_seq, before_seq)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of items in chronological order, with whether more exist on either side."""

    items: list[T]
    has_previous: bool
    has_next: bool
