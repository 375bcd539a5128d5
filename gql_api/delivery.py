"""How new messages and stream ends reach this process's hub.

With change streams (a replica set, or the embedded server) every API process watches the
database once and feeds its own hub, so a message sent through any replica reaches subscribers
on all of them. Without change streams (a standalone MongoDB) delivery stays in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from gql_api.compat import EMPTY_BATCH_PAUSE_SECONDS, change_event_document, ended_stream_id
from gql_api.documents import ChatMessage, LiveStream
from gql_api.hub import MessageHub

logger = logging.getLogger(__name__)

# Server error codes meaning "this deployment has no change streams".
_NO_CHANGE_STREAMS = {40573, 40324, 136}
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
# MongoDB holds an empty getMore up to this long waiting for events.
AWAIT_MS = 1000
STOP_TIMEOUT_SECONDS = 5.0


class Delivery:
    """In-process delivery: the writer hands each message to the hub itself."""

    cross_process = False

    def __init__(self, hub: MessageHub) -> None:
        self.hub = hub

    async def start(self) -> None:
        """Begin delivering."""

    async def stop(self) -> None:
        """Stop delivering."""

    async def message_stored(self, message: ChatMessage) -> None:
        """Called by the writer once a message is stored."""
        try:
            await self.hub.deliver(message)
        except Exception:  # the message is stored; a subscriber catches up on the next one
            logger.exception("Could not deliver message %s live", message.id)

    async def stream_ended(self, stream_id: str) -> None:
        """Called by the writer once a stream is marked ENDED."""
        try:
            await self.hub.end_stream(stream_id)
        except Exception:
            logger.exception("Could not complete the subscriptions of stream %s", stream_id)


class ChangeStreamDelivery(Delivery):
    """One change stream per process on messages (and one on stream ends), feeding the hub."""

    cross_process = True

    def __init__(self, hub: MessageHub, database: AsyncDatabase) -> None:
        super().__init__(hub)
        self._database = database
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()

    async def start(self) -> None:
        messages = ChatMessage.get_settings().name
        streams = LiveStream.get_settings().name
        self._tasks = [
            asyncio.create_task(self._follow(messages, self._on_message), name="feed:messages"),
            asyncio.create_task(self._follow(streams, self._on_stream_change), name="feed:streams"),
        ]

    async def stop(self) -> None:
        # Ask the followers to finish their current read rather than cancel them in the middle
        # of it: pymongo's async driver can hang a task cancelled mid-operation (see
        # ``database.detached``). Cancel only what has not stopped in time.
        self._stopping.set()
        _, late = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_SECONDS) if self._tasks else ((), ())
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def message_stored(self, message: ChatMessage) -> None:
        """Nothing to do: the change stream brings it to every process, this one included."""

    async def stream_ended(self, stream_id: str) -> None:
        """Nothing to do: the change stream brings it to every process, this one included."""

    async def _on_message(self, event: dict[str, Any]) -> None:
        if event.get("operationType") == "insert":
            message = ChatMessage.model_validate(change_event_document(event))
            self.hub.metrics.change_event(message.created_at)
            await self.hub.deliver(message)

    async def _on_stream_change(self, event: dict[str, Any]) -> None:
        if stream_id := ended_stream_id(event):
            await self.hub.end_stream(stream_id)

    async def _follow(self, collection: str, handle: Any) -> None:
        """Watch one collection for ever: resume from the last token after any failure."""
        token: Any = None
        failures = 0
        while not self._stopping.is_set():
            try:
                watch = self._database[collection].watch
                async with await watch(resume_after=token, max_await_time_ms=AWAIT_MS) as stream:
                    if failures:
                        logger.info("Change stream on %s resumed", collection)
                        await self.hub.resync()  # what was stored while we were away
                    failures = 0
                    self.connected.set()
                    while stream.alive and not self._stopping.is_set():
                        event = await stream.try_next()
                        if event is None:
                            await self._pause(EMPTY_BATCH_PAUSE_SECONDS)
                            continue
                        await handle(event)
                        token = event["_id"]
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
            await self._pause(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def open_delivery(hub: MessageHub, database: AsyncDatabase) -> Delivery:
    """Change-stream delivery when the deployment supports it, else in-process with a warning."""
    try:
        probe = await database[ChatMessage.get_settings().name].watch()
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
        delivery = ChangeStreamDelivery(hub, database)
    await delivery.start()
    return delivery
