"""How new entries of the streams' logs (messages, and stream ends), and deletions of
messages, reach this process's hub.

With change streams (a replica set, or the embedded server) every API process watches the
messages collection once and feeds its own hub, so a message sent through any replica reaches
subscribers on all of them; a stream's end is an entry of the same collection, so it arrives
in order after the stream's last message. Without change streams (a standalone MongoDB)
delivery stays in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from gql_api.database import Database
from gql_api.documents import ChatMessage, User
from gql_api.hub import MessageHub
from gql_api.store import EMPTY_BATCH_PAUSE_SECONDS, deletion_from_change_event, message_from_change_event
from gql_api.users import UserCache

logger = logging.getLogger(__name__)

# Server error codes meaning "this deployment has no change streams".
_NO_CHANGE_STREAMS = {40573, 40324, 136}
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
# MongoDB holds an empty getMore up to this long waiting for events.
AWAIT_MS = 1000
# After an empty batch, the users' follower waits this long (the messages' waits
# EMPTY_BATCH_PAUSE_SECONDS, or less: see ``message_stored``): a changed user reaches the cache
# within 0.1 s, and on a database that answers an empty getMore at once (nx-27017) an idle
# follower asks 10 times a second, not 100 (about a quarter of an idle process's CPU, and its
# database's).
USERS_EMPTY_BATCH_PAUSE_SECONDS = 0.1
STOP_TIMEOUT_SECONDS = 5.0
# How long after a write of this process its messages follower reads: the entries stored in
# that time come in one batch, delivered in one pass, so that each subscriber gets them in one
# ``write()`` (``wsprotocol.WriteBatch``). Reading at once after every write costs a system
# call per subscriber and message (measured at 1,000 subscribers: 21 to 25 µs of server CPU per
# delivery, against 12 to 16 with this wait).
GATHER_SECONDS = 0.01


class Delivery:
    """In-process delivery: the writer hands each message to the hub itself."""

    cross_process = False

    def __init__(self, hub: MessageHub[ChatMessage]) -> None:
        self.hub = hub

    async def start(self) -> None:
        """Begin delivering."""

    async def stop(self) -> None:
        """Stop delivering."""

    async def message_stored(self, message: ChatMessage) -> None:
        """Called by the writer once an entry (a message, or a stream's end) is stored."""
        try:
            await self.hub.deliver(message)
        except Exception:  # the message is stored; a subscriber catches up on the next one
            logger.exception("Could not deliver message %s live", message.id)

    async def message_deleted(self, message: ChatMessage) -> None:
        """Called once a message is deleted: subscribers that have not been sent it never are."""
        self.hub.message_deleted(message.stream_id, message.seq)


class ChangeStreamDelivery(Delivery):
    """One change stream per process on the messages collection, feeding the hub; and, with
    a ``UserCache``, one on the users collection, keeping the cache fresh."""

    cross_process = True

    def __init__(
        self,
        hub: MessageHub[ChatMessage],
        database: Database,
        users: UserCache | None = None,
        *,
        empty_batch_pause: float = EMPTY_BATCH_PAUSE_SECONDS,
    ) -> None:
        super().__init__(hub)
        self._database = database
        self._empty_batch_pause = empty_batch_pause
        self._users = users
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        # Ends the messages follower's pause: set by this process's own writes, and to stop.
        self._wake = asyncio.Event()
        self._waking: asyncio.TimerHandle | None = None
        self.connected = asyncio.Event()
        # Set while the messages follower waits out its pause after an empty batch (for tests
        # and tooling to wait on).
        self.resting = asyncio.Event()

    async def start(self) -> None:
        self._tasks.append(
            asyncio.create_task(
                self._follow(
                    ChatMessage.Settings.name,
                    self._on_message,
                    self._on_messages_open,
                    empty_batch_pause=self._empty_batch_pause,
                    wake=self._wake,
                ),
                name="feed:messages",
            )
        )
        if self._users is not None:
            users = self._users
            self._tasks.append(
                asyncio.create_task(
                    self._follow(
                        User.Settings.name,
                        self._on_user,
                        self._on_users_open,
                        users.closed,
                        empty_batch_pause=USERS_EMPTY_BATCH_PAUSE_SECONDS,
                    ),
                    name="feed:users",
                )
            )

    async def stop(self) -> None:
        # Ask the followers to finish their current read rather than cancel them in the middle
        # of it: pymongo's async driver can hang a task cancelled mid-operation (see
        # ``store.detached``). Cancel only what has not stopped in time.
        self._stopping.set()
        self._wake.set()
        if self._waking is not None:
            self._waking.cancel()
            self._waking = None
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def message_stored(self, message: ChatMessage) -> None:
        """The change stream brings it to every process, this one included. Here it ends the
        messages follower's pause (after an empty batch) ``GATHER_SECONDS`` after the write,
        so that this process's writes are read within that time, together; the pause itself
        can then be long enough to cost an idle process little, and other replicas' writes
        wait out at most the pause."""
        if self._waking is None:
            self._waking = asyncio.get_running_loop().call_later(GATHER_SECONDS, self._wake_up)

    def _wake_up(self) -> None:
        self._waking = None
        self._wake.set()

    async def _on_message(self, event: dict[str, Any]) -> None:
        if event.get("operationType") == "insert":
            # Read only for a stream with subscribers here: a busy stream nobody here follows
            # costs this process no parsing.
            if not self.hub.follows(str((event.get("fullDocument") or {}).get("stream_id"))):
                return
            message = message_from_change_event(event)
            self.hub.metrics.change_event(message.created_at)
            await self.hub.deliver(message)
        elif event.get("operationType") == "update" and (deletion := deletion_from_change_event(event)):
            self.hub.message_deleted(deletion.stream_id, deletion.seq)

    async def _on_messages_open(self, reopened: bool) -> None:
        if reopened:
            # What was stored while no stream was open, after a failure or a clean close
            # alike: a stream's end is its last entry, and no later event would pull it in.
            await self.hub.resync()
        self.connected.set()

    async def _on_users_open(self, reopened: bool) -> None:
        assert self._users is not None
        self._users.opened()

    async def _on_user(self, event: dict[str, Any]) -> None:
        assert self._users is not None
        self._users.changed(str(event["documentKey"]["_id"]))

    async def _follow(
        self,
        collection: str,
        on_event: Callable[[dict[str, Any]], Awaitable[None]],
        on_open: Callable[[bool], Awaitable[None]],
        on_close: Callable[[], None] | None = None,
        *,
        empty_batch_pause: float = EMPTY_BATCH_PAUSE_SECONDS,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Watch one collection for ever: resume from the last token after any failure.

        ``on_open`` runs each time the stream opens (told, for the messages, whether it is
        reopened), ``on_close`` each time it breaks or stops; ``empty_batch_pause``: how long
        to wait after a batch with nothing new, less the time the database itself waited for
        one (MongoDB waits up to ``AWAIT_MS``; nx-27017 answers at once), and only until
        ``wake`` is set.
        """
        token: Any = None
        failures = 0
        opened = False
        while not self._stopping.is_set():
            try:
                watch = self._database[collection].watch
                async with await watch(resume_after=token, max_await_time_ms=AWAIT_MS) as stream:
                    if failures:
                        logger.info("Change stream on %s resumed", collection)
                    await on_open(opened or failures > 0)
                    opened = True
                    failures = 0
                    try:
                        while stream.alive and not self._stopping.is_set():
                            if wake is not None:
                                wake.clear()  # a write from now on may not be in this batch
                            asked = time.monotonic()
                            event = await stream.try_next()
                            if event is None:
                                waited = time.monotonic() - asked
                                if wake is None:
                                    await self._pause(empty_batch_pause - waited)
                                    continue
                                self.resting.set()
                                try:
                                    await self._pause(empty_batch_pause - waited, wake)
                                finally:
                                    self.resting.clear()
                                continue
                            await on_event(event)
                            token = event["_id"]
                    finally:
                        if on_close is not None:
                            on_close()
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                if token is not None and failures == 0:
                    logger.warning("Cannot resume the change stream on %s (%s); restarting it", collection, exc)
                    token = None  # the hub's catch-up from history closes the gap instead
                failures += 1
            except PyMongoError as exc:
                failures += 1
                if failures == 1:
                    logger.warning("Change stream on %s broke (%s); resuming", collection, exc)
            except Exception:
                failures += 1
                logger.exception("Delivering from the change stream on %s failed; resuming", collection)
            await self._pause(retry_pause(failures))

    async def _pause(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Sleep, but wake at once when ``until`` is set (by default: when asked to stop)."""
        if seconds <= 0 or self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((until or self._stopping).wait(), seconds)


def retry_pause(failures: int) -> float:
    """How long to wait before reopening a change stream after ``failures`` failures in a row.

    A stream the server closed cleanly (``failures == 0``) is reopened at once, but for the
    short pause that keeps a server which keeps closing it from being asked in a tight loop.
    """
    if failures <= 0:
        return EMPTY_BATCH_PAUSE_SECONDS
    return RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]


async def open_delivery(hub: MessageHub[ChatMessage], database: Database, users: UserCache | None = None) -> Delivery:
    """Change-stream delivery when the deployment supports it, else in-process with a warning.

    With change streams ``users`` is kept fresh from them; without, it serves nothing.
    """
    try:
        probe = await database[ChatMessage.Settings.name].watch()
        await probe.close()
    except OperationFailure as exc:
        if exc.code not in _NO_CHANGE_STREAMS and "replica set" not in str(exc):
            raise
        logger.warning(
            "This MongoDB has no change streams (%s): live messages reach only subscribers "
            "of the API process that stored them. Multi-replica deployments need a replica set.",
            exc,
        )
        delivery: Delivery = Delivery(hub)
    else:
        delivery = ChangeStreamDelivery(hub, database, users)
    await delivery.start()
    return delivery
