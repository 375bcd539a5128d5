"""chatEvents over real websockets (both subprotocols) on the real app and database: every event
type with its fields, resuming with `after` across deletes and bans, the stream's end, viewer
counts, rendering once per operation, and delivery across two replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from gql_api.app import create_app
from gql_api.documents import ChatMessage, MessageKind, isoformat_z
from gql_api.pagination import decode_cursor
from tests.conftest import GraphQLClient, LiveServer, serve

EVENTS = """
subscription Events($s: ID!, $a: String) {
  chatEvents(streamId: $s, after: $a) {
    __typename
    ... on ChatLogEvent { cursor at }
    ... on MessageAdded { message { id content cursor senderRole sender { userId } } }
    ... on MessageDeleted { messageId messageCursor deletedBy { userId } reason }
    ... on UserBanned { user { userId } bannedBy { userId } reason expiresAt }
    ... on UserUnbanned { user { userId } unbannedBy { userId } }
    ... on ModeratorAdded { user { userId } by { userId } }
    ... on ModeratorRemoved { user { userId } by { userId } }
    ... on ChatSettingsChanged { changedBy { userId } slowModeSeconds chatEnabled blockedTermCount }
    ... on ViewerCountChanged { streamId viewerCount }
  }
}
"""
MESSAGE_ADDED = "subscription($s: ID!) { messageAdded(streamId: $s) { content } }"
SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id cursor } }"
ADD = "mutation($s: ID!, $u: ID!) { addModerator(streamId: $s, userId: $u) { id } }"
REMOVE = "mutation($s: ID!, $u: ID!) { removeModerator(streamId: $s, userId: $u) { id } }"
BAN = """
mutation($s: ID!, $u: ID!, $d: Int, $r: String) {
  banUser(streamId: $s, userId: $u, durationSeconds: $d, reason: $r) { expiresAt }
}
"""
UNBAN = "mutation($s: ID!, $u: ID!) { unbanUser(streamId: $s, userId: $u) }"
DELETE = "mutation($id: ID!, $r: String) { deleteChatMessage(id: $id, reason: $r) { id } }"
END = "mutation($s: ID!) { endLiveStream(id: $s) { status } }"
CHAT_OFF = """
mutation($s: ID!) { updateChatSettings(streamId: $s, chatEnabled: false, blockedTerms: ["x", "y"]) { chatEnabled } }
"""
SUBPROTOCOLS = ["graphql-transport-ws", "graphql-ws"]
DEADLINE = 30  # generous: the CI machine is a loaded 2-core box


def _transport(live: LiveServer, token: str, subprotocol: str) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=live.ws_url,
        init_payload={"Authorization": token},
        subprotocols=[subprotocol],
        connect_args={"ping_interval": None},
    )


class _Complete:
    """Queued when the subscription completed."""


COMPLETE = _Complete()


class Subscription:
    """One chatEvents subscription read by a task: its events (viewer counts apart) in a queue."""

    def __init__(self, session: Any, stream_id: str, after: str | None = None, query: str = EVENTS) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.counts: asyncio.Queue[int] = asyncio.Queue()
        self.payloads: list[str] = []  # every frame's data as received, viewer counts included
        variables = {"s": stream_id, "a": after} if query is EVENTS else {"s": stream_id}
        self._task = asyncio.create_task(self._read(session, GraphQLRequest(query, variable_values=variables)))

    async def _read(self, session: Any, request: GraphQLRequest) -> None:
        try:
            async for result in session.subscribe(request):
                self.payloads.append(json.dumps(result, sort_keys=True))
                event = next(iter(result.values()))
                if event.get("__typename") == "ViewerCountChanged":
                    await self.counts.put(event["viewerCount"])
                else:
                    await self.events.put(event)
            await self.events.put(COMPLETE)
        except Exception as exc:  # noqa: BLE001 - the test that reads it raises it
            await self.events.put(exc)

    async def take(self, count: int) -> list[dict[str, Any]]:
        taken = []
        for _ in range(count):
            item = await asyncio.wait_for(self.events.get(), DEADLINE)
            if isinstance(item, Exception):
                raise item
            assert item is not COMPLETE, f"completed after {taken}"
            taken.append(item)
        return taken

    async def completes(self) -> None:
        item = await asyncio.wait_for(self.events.get(), DEADLINE)
        assert item is COMPLETE, item

    async def count(self, total: int) -> None:
        """Wait for a ViewerCountChanged with this total."""
        while await asyncio.wait_for(self.counts.get(), DEADLINE) != total:
            pass

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@asynccontextmanager
async def session_for(live: LiveServer, token: str, subprotocol: str = "graphql-transport-ws") -> AsyncIterator[Any]:
    client = Client(transport=_transport(live, token, subprotocol))
    session = await client.connect_async()
    try:
        yield session
    finally:
        await client.close_async()


class Room:
    """A stream with its owner, a moderator and two viewers, and a GraphQL client for each."""


@pytest.fixture
async def room(make_user, make_stream, client_for) -> Room:
    owner, moderator, viewer, other = [await make_user() for _ in range(4)]
    room = Room()
    room.stream = await make_stream(owner)
    room.s = str(room.stream.id)
    room.owner, room.moderator, room.viewer, room.other = owner, moderator, viewer, other
    room.as_owner, room.as_moderator = client_for(owner), client_for(moderator)
    room.as_viewer, room.as_other = client_for(viewer), client_for(other)
    return room


async def _send(client: GraphQLClient, stream_id: str, content: str) -> dict[str, Any]:
    return (await client.data(SEND, {"s": stream_id, "c": content}))["sendChatMessage"]


async def _log(live: LiveServer, stream_id: str) -> list[ChatMessage]:
    return [entry async for entry in live.chat.store.replay(stream_id, after=0, every_kind=True)]


def _seq(cursor: str) -> int:
    return decode_cursor(cursor)


# -- every event type, live ---------------------------------------------------------------------


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_every_event_type_is_delivered_live_with_its_fields_then_the_end(server, room, subprotocol):
    owner, moderator, viewer, other = (str(u.id) for u in (room.owner, room.moderator, room.viewer, room.other))
    async with session_for(server, server.token(room.viewer), subprotocol) as session:
        events = Subscription(session, room.s)
        await server.chat.hub.wait_for_subscribers(room.s, 1)

        await room.as_owner.data(ADD, {"s": room.s, "u": moderator})
        [added] = await events.take(1)
        assert added["__typename"] == "ModeratorAdded"
        assert (added["user"]["userId"], added["by"]["userId"]) == (moderator, owner)

        sent = await _send(room.as_viewer, room.s, "hello")
        [message] = await events.take(1)
        assert message["__typename"] == "MessageAdded"
        assert message["cursor"] == message["message"]["cursor"] == sent["cursor"]
        assert message["message"] == {
            "id": sent["id"],
            "content": "hello",
            "cursor": sent["cursor"],
            "senderRole": "VIEWER",
            "sender": {"userId": viewer},
        }

        await room.as_moderator.data(DELETE, {"id": sent["id"], "r": "rude"})
        [deleted] = await events.take(1)
        assert deleted["__typename"] == "MessageDeleted"
        assert (deleted["messageId"], deleted["messageCursor"]) == (sent["id"], sent["cursor"])
        assert (deleted["deletedBy"], deleted["reason"]) == ({"userId": moderator}, "rude")

        ban = (await room.as_moderator.data(BAN, {"s": room.s, "u": other, "d": 60, "r": "spam"}))["banUser"]
        await room.as_moderator.data(BAN, {"s": room.s, "u": viewer})  # permanent
        timeout, permanent = await events.take(2)
        assert timeout["__typename"] == permanent["__typename"] == "UserBanned"
        assert (timeout["user"], timeout["bannedBy"]) == ({"userId": other}, {"userId": moderator})
        assert (timeout["reason"], timeout["expiresAt"]) == ("spam", ban["expiresAt"])
        assert (permanent["user"], permanent["reason"], permanent["expiresAt"]) == ({"userId": viewer}, None, None)

        await room.as_moderator.data(UNBAN, {"s": room.s, "u": other})
        [unbanned] = await events.take(1)
        assert unbanned["__typename"] == "UserUnbanned"
        assert (unbanned["user"], unbanned["unbannedBy"]) == ({"userId": other}, {"userId": moderator})

        await room.as_owner.data(CHAT_OFF, {"s": room.s})
        [settings] = await events.take(1)
        assert (settings["__typename"], settings["changedBy"]) == ("ChatSettingsChanged", {"userId": owner})
        assert (settings["slowModeSeconds"], settings["chatEnabled"], settings["blockedTermCount"]) == (0, False, 2)

        await room.as_owner.data(REMOVE, {"s": room.s, "u": moderator})
        [removed] = await events.take(1)
        assert removed["__typename"] == "ModeratorRemoved"
        assert (removed["user"], removed["by"]) == ({"userId": moderator}, {"userId": owner})

        await room.as_owner.data(END, {"s": room.s})
        [ended] = await events.take(1)
        assert ended["__typename"] == "StreamEnded"
        await events.completes()

    received = [added, message, deleted, timeout, permanent, unbanned, settings, removed, ended]
    log = await _log(server, room.s)
    assert [_seq(event["cursor"]) for event in received] == [entry.seq for entry in log] == list(range(1, 10))
    assert [event["at"] for event in received] == [isoformat_z(entry.created_at) for entry in log]


async def test_message_added_still_sees_messages_only(server, room):
    async with session_for(server, server.token(room.viewer)) as session:
        messages = Subscription(session, room.s, query=MESSAGE_ADDED)
        events = Subscription(session, room.s)
        await server.chat.hub.wait_for_subscribers(room.s, 2)
        await _send(room.as_viewer, room.s, "one")
        await room.as_owner.data(BAN, {"s": room.s, "u": str(room.other.id)})
        await room.as_owner.data(ADD, {"s": room.s, "u": str(room.moderator.id)})
        await _send(room.as_viewer, room.s, "two")
        await room.as_owner.data(END, {"s": room.s})

        assert await messages.take(2) == [{"content": "one"}, {"content": "two"}]
        await messages.completes()
        kinds = [event["__typename"] for event in await events.take(5)]
        assert kinds == ["MessageAdded", "UserBanned", "ModeratorAdded", "MessageAdded", "StreamEnded"]
        await events.completes()


async def test_a_message_deleted_while_queued_is_left_out_but_its_deletion_is_not(server, room):
    events = server.chat.events(room.s)
    first = asyncio.ensure_future(anext(events))
    await server.chat.hub.wait_for_subscribers(room.s, 1)
    await _send(room.as_viewer, room.s, "one")
    doomed = await _send(room.as_viewer, room.s, "doomed")
    await _send(room.as_viewer, room.s, "three")
    try:
        assert (await first).content == "one"  # the rest waits in the subscriber's queue, unsent
        await room.as_owner.data(DELETE, {"id": doomed["id"]})
        three, deletion = await anext(events), await anext(events)
    finally:
        await events.aclose()
    assert three.content == "three"
    assert deletion.kind is MessageKind.MESSAGE_DELETED and deletion.event.message_id == doomed["id"]


# -- resuming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_resuming_after_a_cursor_replays_every_later_event_once_in_order(server, room, subprotocol):
    viewer, other = str(room.viewer.id), str(room.other.id)
    await room.as_owner.data(ADD, {"s": room.s, "u": str(room.moderator.id)})
    async with session_for(server, server.token(room.viewer), subprotocol) as session:
        events = Subscription(session, room.s)
        await server.chat.hub.wait_for_subscribers(room.s, 1)
        seen = await _send(room.as_viewer, room.s, "seen")
        await room.as_moderator.data(BAN, {"s": room.s, "u": other, "d": 30})
        first = await events.take(2)
        await events.stop()
    await server.chat.hub.wait_for_subscribers(room.s, 0)

    # While away: messages through both kinds of sender, bans, and deletes of a message it
    # received and of one it never did.
    await room.as_moderator.data(DELETE, {"id": seen["id"], "r": "seen, then deleted"})
    unseen = await _send(room.as_viewer, room.s, "never seen")
    await _send(room.as_moderator, room.s, "from a moderator")
    await room.as_moderator.data(DELETE, {"id": unseen["id"]})
    await room.as_moderator.data(UNBAN, {"s": room.s, "u": other})
    await room.as_owner.data(BAN, {"s": room.s, "u": viewer, "r": "enough"})
    await _send(room.as_other, room.s, "back")

    async with session_for(server, server.token(room.viewer), subprotocol) as session:
        events = Subscription(session, room.s, after=first[-1]["cursor"])
        replayed = await events.take(6)
        await server.chat.hub.wait_for_subscribers(room.s, 1)
        await _send(room.as_other, room.s, "live again")
        [live] = await events.take(1)
        await room.as_owner.data(END, {"s": room.s})
        [ended] = await events.take(1)
        await events.completes()

    later = [*replayed, live, ended]
    assert [(e["__typename"], e.get("message", {}).get("content")) for e in later] == [
        ("MessageDeleted", None),
        # "never seen" (seq 6) is left out: it was deleted before this subscriber got it.
        ("MessageAdded", "from a moderator"),
        ("MessageDeleted", None),
        ("UserUnbanned", None),
        ("UserBanned", None),
        ("MessageAdded", "back"),
        ("MessageAdded", "live again"),
        ("StreamEnded", None),
    ]
    assert (later[0]["messageId"], later[0]["reason"]) == (seen["id"], "seen, then deleted")
    assert (later[2]["messageId"], later[2]["messageCursor"]) == (unseen["id"], unseen["cursor"])
    seqs = [_seq(e["cursor"]) for e in first + later]
    assert seqs == [2, 3, 4, *range(6, 13)]  # no gap but the deleted message, no duplicate
    assert [entry.seq for entry in await _log(server, room.s)] == list(range(1, 13))


async def test_a_message_cursor_resumes_chat_events_too(server, room):
    sent = await _send(room.as_viewer, room.s, "from history")
    await room.as_owner.data(BAN, {"s": room.s, "u": str(room.other.id)})
    await room.as_owner.data(END, {"s": room.s})
    async with session_for(server, server.token(room.viewer)) as session:
        events = Subscription(session, room.s, after=sent["cursor"])
        kinds = [event["__typename"] for event in await events.take(2)]
        await events.completes()
    assert kinds == ["UserBanned", "StreamEnded"]


async def test_subscribing_to_an_ended_stream_tells_it_ended_and_completes(server, room):
    await _send(room.as_viewer, room.s, "last words")
    await room.as_owner.data(END, {"s": room.s})
    async with session_for(server, server.token(room.viewer), "graphql-ws") as session:
        events = Subscription(session, room.s)
        [ended] = await events.take(1)
        await events.completes()
        after_the_end = Subscription(session, room.s, after=ended["cursor"])
        await after_the_end.completes()
    assert (ended["__typename"], _seq(ended["cursor"])) == ("StreamEnded", 2)


@pytest.mark.parametrize(
    ("stream_id", "after", "code"),
    [("64d15f9e2e6c8f4d5a123000", None, "NOT_FOUND"), (None, "not a cursor", "BAD_USER_INPUT")],
)
async def test_an_unknown_stream_or_a_bad_cursor_is_refused_before_any_event(server, room, stream_id, after, code):
    async with session_for(server, server.token(room.viewer)) as session:
        events = Subscription(session, stream_id or room.s, after=after)
        with pytest.raises(TransportQueryError) as caught:
            await events.take(1)
    assert caught.value.errors[0]["extensions"]["code"] == code
    assert events.payloads == []  # not even a viewer count came first


# -- viewer counts and rendering ----------------------------------------------------------------


@pytest.fixture
async def quick_counts(server, make_settings) -> AsyncIterator[LiveServer]:
    """An app on the same database whose viewer counts refresh every 200 ms (its presence then
    expires after 600 ms: long enough not to lapse on a loaded machine, which would make the
    counts dip to 0 mid-test)."""
    settings = make_settings(viewer_count_interval_seconds=0.2)
    async with serve(create_app(settings, database=server.services.database)) as live:
        yield live


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_viewer_count_changes_arrive_as_events(quick_counts, room, subprotocol):
    live = quick_counts
    async with session_for(live, live.token(room.viewer), subprotocol) as session:
        first = Subscription(session, room.s)
        await first.count(1)
        second = Subscription(session, room.s)
        await first.count(2)
        await second.count(2)
        await second.stop()
        await first.count(1)
    assert {json.loads(p)["chatEvents"]["streamId"] for p in first.payloads} == {room.s}


async def test_each_event_is_rendered_once_per_distinct_operation(quick_counts, room, make_user):
    live = quick_counts
    renderer = live.app.graphql.renderer
    narrow = """
    subscription($s: ID!) {
      chatEvents(streamId: $s) { __typename ... on ViewerCountChanged { viewerCount } ... on ChatLogEvent { cursor } }
    }
    """
    audience = [(EVENTS, "graphql-transport-ws")] * 4 + [(narrow, "graphql-ws")] * 3
    viewers = [await make_user() for _ in audience]
    clients = [
        Client(transport=_transport(live, live.token(v), p)) for v, (_, p) in zip(viewers, audience, strict=True)
    ]
    sessions = [await client.connect_async() for client in clients]
    before = renderer.executions
    try:
        subscriptions = [Subscription(s, room.s, query=q) for s, (q, _) in zip(sessions, audience, strict=True)]
        await live.chat.hub.wait_for_subscribers(room.s, len(audience))
        for n in range(3):
            await _send(room.as_viewer, room.s, f"m{n}")
        await room.as_owner.data(BAN, {"s": room.s, "u": str(room.other.id)})
        for subscription in subscriptions:
            assert len(await subscription.take(4)) == 4
            # Once each has the final count, nothing more is rendered: every frame is in.
            await subscription.count(len(audience))
        executions = renderer.executions - before
    finally:
        for client in clients:
            await client.close_async()

    # Every frame an operation's subscribers received was rendered once for all of them.
    distinct = [set(), set()]
    for subscription, (query, _) in zip(subscriptions, audience, strict=True):
        distinct[query is narrow].update(subscription.payloads)
    frames = sum(len(subscription.payloads) for subscription in subscriptions)
    assert executions == len(distinct[0]) + len(distinct[1])
    assert frames >= 2 * executions


# -- two replicas -------------------------------------------------------------------------------


async def test_a_ban_a_delete_and_a_settings_change_through_one_replica_reach_the_other_in_order_and_hold(
    server, room, make_settings
):
    viewer = str(room.viewer.id)
    async with (
        serve(create_app(make_settings(), database=server.services.database)) as b,
        httpx.AsyncClient(base_url=b.url, timeout=DEADLINE) as http_b,
        session_for(b, b.token(room.other)) as session,
    ):
        viewer_on_b = GraphQLClient(http_b, b.token(room.viewer))
        other_on_b, owner_on_b = GraphQLClient(http_b, b.token(room.other)), GraphQLClient(http_b, b.token(room.owner))
        events = Subscription(session, room.s)
        await b.chat.hub.wait_for_subscribers(room.s, 1)

        on_b = await _send(viewer_on_b, room.s, "through B")
        on_a = await _send(room.as_viewer, room.s, "through A")
        first = await events.take(2)
        await room.as_owner.data(DELETE, {"id": on_b["id"], "r": "gone"})  # through A
        await room.as_owner.data(BAN, {"s": room.s, "u": viewer, "r": "spam"})  # through A
        refused = await viewer_on_b.error(SEND, {"s": room.s, "c": "still here?"})
        assert refused["extensions"]["code"] == "FORBIDDEN"  # the ban holds on B at once
        await room.as_owner.data(CHAT_OFF, {"s": room.s})  # through A
        refused = await other_on_b.error(SEND, {"s": room.s, "c": "and me?"})
        assert refused["extensions"]["code"] == "FORBIDDEN"  # so does the chat being off
        await _send(owner_on_b, room.s, "owner only now")
        rest = await events.take(4)

    received = first + rest
    assert [(e["__typename"], e.get("message", {}).get("content")) for e in received] == [
        ("MessageAdded", "through B"),
        ("MessageAdded", "through A"),
        ("MessageDeleted", None),
        ("UserBanned", None),
        ("ChatSettingsChanged", None),
        ("MessageAdded", "owner only now"),
    ]
    assert received[1]["message"]["id"] == on_a["id"]
    assert (received[2]["messageId"], received[3]["user"]["userId"]) == (on_b["id"], viewer)
    assert [_seq(e["cursor"]) for e in received] == [entry.seq for entry in await _log(server, room.s)]
