"""The per-user message rate limit and slow mode, counted from each stream's log.

A sliding log: a message is admitted while fewer than ``limit`` of the user's messages in the
stream fall inside the last ``window`` seconds, so no span of ``window`` seconds ever holds
more than ``limit`` of them (a fixed-window counter lets twice the limit through across a
window boundary). Slow mode, a stream's chat setting, asks for at least its gap between two
messages of one viewer, with the limit off too.

There is no counter to keep: every message is an entry of the stream's log, with its sender,
its time and its dedup key, and the roster of each stream a process writes to follows that log
exactly (``roster``). Its ``SendLog`` holds each user's recent messages as of the roster's
position. A send is checked like the roster's other rules, twice: early, against what this
process knows, which refuses only what is over the limit anyway (the log only grows); and when
it is numbered, against the roster as of that number, with the messages numbered before it in
the same group commit (``Tally``). A message numbered N is stored only if every entry before N
was applied to the roster first (a number another replica took sends the batch back to read
it), so the limit holds across replicas, and the send's one round trip is the insert that
stores it. A message that is refused for any reason, or fails validation, is never stored, so
it takes no slot; a retry of a stored message (the same ``clientMessageId``) is found by its
dedup key and takes none either.

Times are the entries' ``created_at``, from each replica's clock: replicas need synchronised
clocks (NTP), as any shared window does.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from gql_api.errors import RateLimited


@dataclass(frozen=True, slots=True)
class Sent:
    """One counted message: when it was stored (epoch ms) and, for a message a client can
    retry (one with a ``clientMessageId``), its dedup key."""

    at_ms: int
    dedup_key: str | None


class SendLog:
    """Each user's newest messages in one stream, as of the log entry ``position``.

    At most ``keep`` per user (the limit: older ones can refuse nothing), none older than
    ``horizon_ms`` before the newest recorded (the longest of the window and slow mode's gap).
    Entries are noted in log order, each once: one noted again (two readers of the log
    overlap) changes nothing.
    """

    def __init__(self, keep: int, horizon_ms: int, position: int = 0) -> None:
        self.position = position
        self._keep = max(keep, 1)
        self.horizon_ms = horizon_ms
        # User id -> their messages, oldest first; the users who sent least recently first.
        self._users: OrderedDict[str, deque[Sent]] = OrderedDict()

    def note(self, seq: int, sender_id: str | None = None, at_ms: int = 0, dedup_key: str | None = None) -> None:
        """Follow the log to entry ``seq``: a message of ``sender_id`` when it counts, else
        any other entry (``sender_id`` None)."""
        if seq <= self.position:
            return
        self.position = seq
        if sender_id is None:
            return
        sends = self._users.get(sender_id)
        if sends is None:
            sends = self._users[sender_id] = deque(maxlen=self._keep)
        else:
            self._users.move_to_end(sender_id)
        # Only a client's key ("c:...", see ``documents.ChatMessage.dedup_key``) can come again.
        sends.append(Sent(at_ms, dedup_key if dedup_key is not None and dedup_key.startswith("c:") else None))
        # Users whose newest message left the horizon have nothing left that counts.
        cutoff = at_ms - self.horizon_ms
        while self._users:
            oldest = next(iter(self._users.values()))
            if oldest[-1].at_ms > cutoff:
                break
            self._users.popitem(last=False)

    def of(self, user_id: str) -> Iterable[Sent]:
        """The user's recorded messages, oldest first."""
        return self._users.get(user_id, ())

    def __len__(self) -> int:
        """How many users have messages recorded."""
        return len(self._users)


class Tally:
    """The messages numbered so far in one round of a group commit, not stored yet: counted
    with the roster's, so one commit cannot store more than the limit either."""

    def __init__(self, log: SendLog) -> None:
        self._log = log
        self._numbered: dict[str, list[Sent]] = {}

    def of(self, user_id: str) -> list[Sent]:
        """The user's messages: the log's, then this round's."""
        return [*self._log.of(user_id), *self._numbered.get(user_id, ())]

    def add(self, user_id: str, at_ms: int, dedup_key: str) -> None:
        self._numbered.setdefault(user_id, []).append(Sent(at_ms, dedup_key))


class MessageRateLimiter:
    """At most ``limit`` messages per ``window_seconds`` per user per stream (``limit=0`` is
    off), and, per call, at least ``min_interval_seconds`` between two of them (slow mode)."""

    def __init__(self, limit: int, window_seconds: int) -> None:
        self.limit = limit
        self.window_seconds = window_seconds

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def new_log(self, longest_gap_seconds: int, position: int = 0) -> SendLog:
        """An empty log for a stream, as of entry ``position``, keeping what the limit and a
        slow mode of up to ``longest_gap_seconds`` need."""
        return SendLog(self.limit, max(self.window_seconds, longest_gap_seconds) * 1000, position)

    def check(self, sent: Iterable[Sent], dedup_key: str, now_ms: int, min_interval_seconds: int = 0) -> bool:
        """Whether a message may be stored after the user's messages ``sent`` (oldest first):
        True when it is one of them already (a retry: it has its slot), False when it counts
        as a new one; RateLimited when it is over the limit, or sooner than
        ``min_interval_seconds`` after the newest of them."""
        sent = list(sent)
        if any(s.dedup_key == dedup_key for s in sent):
            return True
        if min_interval_seconds > 0 and sent:
            newest = max(s.at_ms for s in sent)
            if newest + min_interval_seconds * 1000 > now_ms:
                raise self.slow_mode_refusal(min_interval_seconds, newest + min_interval_seconds * 1000 - now_ms)
        if self.enabled:
            window_ms = self.window_seconds * 1000
            recent = sorted((s.at_ms for s in sent if s.at_ms > now_ms - window_ms), reverse=True)
            if len(recent) >= self.limit:
                raise self._refusal(recent[self.limit - 1] + window_ms - now_ms)
        return False

    def _refusal(self, wait_ms: int) -> RateLimited:
        retry_after = max(1, math.ceil(wait_ms / 1000))
        return RateLimited(
            f"Rate limit exceeded: at most {self.limit} messages per {self.window_seconds} seconds "
            f"in a stream; try again in {retry_after} s",
            retry_after=retry_after,
        )

    @staticmethod
    def slow_mode_refusal(interval_seconds: int, wait_ms: int) -> RateLimited:
        retry_after = max(1, math.ceil(wait_ms / 1000))
        return RateLimited(
            f"Rate limit exceeded: slow mode is on, one message every {interval_seconds} seconds "
            f"in this stream; try again in {retry_after} s",
            retry_after=retry_after,
        )
