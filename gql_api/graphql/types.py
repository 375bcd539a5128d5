"""GraphQL object types, converted explicitly from the stored documents."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from gql_api import documents
from gql_api.moderation import role_of_message
from gql_api.pagination import Page, encode_cursor


@strawberry.enum(description="What a chat message is.")
class MessageKind(Enum):
    TEXT = "TEXT"
    SUPERLIKE = "SUPERLIKE"


@strawberry.enum(description="A user's part in a stream's chat.")
class ChatRole(Enum):
    OWNER = "OWNER"
    MODERATOR = "MODERATOR"
    VIEWER = "VIEWER"


@strawberry.enum(description="Whether a stream is still accepting messages.")
class StreamStatus(Enum):
    LIVE = "LIVE"
    ENDED = "ENDED"


@strawberry.type(description="One size of a profile photo.")
class PhotoVariant:
    size: str
    url: str


@strawberry.type(description="A user's profile photo and its resized variants.")
class ProfilePhoto:
    id: strawberry.ID
    url: str
    type: str
    variants: list[PhotoVariant]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_document(cls, photo: documents.ProfilePhoto) -> ProfilePhoto:
        return cls(
            id=strawberry.ID(photo.id),
            url=photo.url,
            type=photo.type,
            variants=[PhotoVariant(size=size, url=url) for size, url in sorted(photo.variants.items())],
            created_at=photo.created_at,
            updated_at=photo.updated_at,
        )


def _profile_fields(profile: documents.PublicProfile) -> dict[str, Any]:
    """What ``User`` and ``UserSnapshot`` show of a profile, apart from how they name the id."""
    photo = profile.profile_photo
    return {
        "username": profile.username,
        "name": profile.name,
        "surname": profile.surname,
        "profile_photo": ProfilePhoto.from_document(photo) if photo else None,
        "availability_status": profile.availability_status,
    }


@strawberry.type(description="A user's public profile.")
class User:
    id: strawberry.ID
    username: str
    name: str
    surname: str
    profile_photo: ProfilePhoto | None
    availability_status: str

    @classmethod
    def from_profile(cls, profile: documents.PublicProfile) -> User:
        return cls(id=strawberry.ID(profile.id), **_profile_fields(profile))

    @classmethod
    def from_document(cls, user: documents.User) -> User:
        return cls.from_profile(user.public_profile())


@strawberry.type(
    description=(
        "A user's public profile as it was at one moment: a message's sender when they sent it, "
        "a stream's owner when they created it. Select "
        "`userId`, not the deprecated `id`: without an `id`, normalised caches (Apollo Client, "
        "urql Graphcache, Relay) keep each snapshot inside its message or stream, where with one "
        "they merge every snapshot of a user into one entry and old messages show the newest name."
    )
)
class UserSnapshot:
    user_id: strawberry.ID = strawberry.field(description="The user's id, as `User.id`.")
    username: str
    name: str
    surname: str
    profile_photo: ProfilePhoto | None
    availability_status: str

    # Strawberry types `field(...)` as returning Any; the resolver itself is fully typed.
    @strawberry.field(  # type: ignore[untyped-decorator]
        description="The user's id (same as `userId`).",
        deprecation_reason=(
            "Select `userId`. Selecting `id` lets Apollo Client and other normalised caches "
            "store every snapshot of a user under one id, so old messages show the newest name."
        ),
    )
    def id(self) -> strawberry.ID:
        # Kept so that documents written against `sender: User` and `owner: User` still validate.
        return self.user_id

    @classmethod
    def from_profile(cls, profile: documents.PublicProfile) -> UserSnapshot:
        return cls(user_id=strawberry.ID(profile.id), **_profile_fields(profile))


async def _superlike_count(root: LiveStream, info: Info) -> int:
    # Counted from the stored superlikes when asked for, so it can never drift from them.
    count: int = await info.context.chat.superlike_count(str(root.id))
    return count


def _viewer_count(root: LiveStream, info: Info) -> int:
    # This replica's latest sum over every replica: no database read per stream (see ``viewers``).
    total: int = info.context.viewers.total(str(root.id))
    return total


async def _blocked_terms(root: ChatSettings, info: Info) -> list[str] | None:
    # The list is the moderators' tool: a viewer who could read it could write around it.
    role = await info.context.chat.moderation.role(info.context.user, root.stream)
    return list(root.stored.blocked_terms) if role is not documents.ChatRole.VIEWER else None


@strawberry.type(
    description=(
        "The rules of a stream's chat for its viewers, set by its owner and moderators "
        "(`updateChatSettings`); the owner and moderators are held to none of them."
    )
)
class ChatSettings:
    slow_mode_seconds: int = strawberry.field(
        description="Seconds a viewer waits between two messages: 0 (off), or 3 to 120."
    )
    chat_enabled: bool = strawberry.field(
        description="False: only the owner and moderators can send messages and superlikes."
    )
    blocked_terms: list[str] | None = strawberry.field(
        resolver=_blocked_terms,
        description=(
            "Terms a viewer's message may not contain (case-insensitive, compared after Unicode "
            "NFKC normalisation; also inside words). Null unless the caller is the owner or a moderator."
        ),
    )
    updated_at: datetime | None = strawberry.field(description="When a setting last changed; null if never.")
    updated_by: UserSnapshot | None = strawberry.field(
        description="Who last changed a setting, as they were then; null if no one has."
    )
    stored: strawberry.Private[documents.ChatSettings]
    stream: strawberry.Private[documents.LiveStream]

    @classmethod
    def from_document(cls, stream: documents.LiveStream) -> ChatSettings:
        settings, change = stream.chat_settings, stream.chat_settings.last_change
        return cls(
            slow_mode_seconds=settings.slow_mode_seconds,
            chat_enabled=settings.chat_enabled,
            updated_at=change.at if change is not None else None,
            updated_by=UserSnapshot.from_profile(change.by) if change is not None else None,
            stored=settings,
            stream=stream,
        )


async def _moderators(root: LiveStream, info: Info) -> list[User]:
    users = await info.context.chat.moderation.moderators(str(root.id))
    return [User.from_document(user) for user in users]


@strawberry.type(description="A live stream that viewers chat in.")
class LiveStream:
    id: strawberry.ID
    title: str
    status: StreamStatus
    owner: UserSnapshot = strawberry.field(
        description="The owner's public profile when the stream was created (select `userId`, not `id`)."
    )
    superlike_count: int = strawberry.field(resolver=_superlike_count)
    viewer_count: int = strawberry.field(
        resolver=_viewer_count,
        description=(
            "Live subscribers of the stream on every replica, refreshed every "
            "VIEWER_COUNT_INTERVAL_SECONDS (5 s by default)."
        ),
    )
    moderators: list[User] = strawberry.field(
        resolver=_moderators,
        description="The users the owner appointed to moderate the chat, with their profiles as they are now.",
    )
    chat_settings: ChatSettings = strawberry.field(description="The rules of the stream's chat for its viewers.")
    created_at: datetime
    ended_at: datetime | None

    @classmethod
    def from_document(cls, stream: documents.LiveStream) -> LiveStream:
        return cls(
            id=strawberry.ID(str(stream.id)),
            title=stream.title,
            status=StreamStatus(stream.status.value),
            owner=UserSnapshot.from_profile(stream.owner),
            chat_settings=ChatSettings.from_document(stream),
            created_at=stream.created_at,
            ended_at=stream.ended_at,
        )


def _sender_role(root: ChatMessage, info: Info) -> ChatRole:
    if root.stored.sender_role is not None:  # every message stored since roles exist: no await
        return ChatRole(root.stored.sender_role.value)
    return _derived_role(root.stored, info)  # type: ignore[return-value]  # GraphQL awaits it


async def _derived_role(message: documents.ChatMessage, info: Info) -> ChatRole:
    owner_id = await info.context.chat.owner_id(message.stream_id)
    return ChatRole(role_of_message(message, owner_id).value)


@strawberry.type(description="A chat message or superlike in a live stream.")
class ChatMessage:
    id: strawberry.ID
    stream_id: strawberry.ID
    kind: MessageKind
    content: str
    sender: UserSnapshot = strawberry.field(
        description="The sender's public profile when the message was sent (select `userId`, not `id`)."
    )
    created_at: datetime
    updated_at: datetime
    client_message_id: str | None
    cursor: str = strawberry.field(description="This message's position in its stream, for `after`/`before` arguments.")
    sender_role: ChatRole = strawberry.field(
        resolver=_sender_role,
        description="The sender's role in the stream when the message was sent, for badges.",
    )
    deleted_at: datetime | None = strawberry.field(
        description="When the message was deleted (its `content` is then empty); null while it stands."
    )
    stored: strawberry.Private[documents.ChatMessage]

    @classmethod
    def from_document(cls, message: documents.ChatMessage) -> ChatMessage:
        return cls(
            id=strawberry.ID(str(message.id)),
            stream_id=strawberry.ID(message.stream_id),
            kind=MessageKind(message.kind.value),
            content=message.content,
            sender=UserSnapshot.from_profile(message.sender),
            created_at=message.created_at,
            updated_at=message.updated_at,
            client_message_id=message.client_message_id,
            cursor=encode_cursor(message.seq),
            deleted_at=message.deletion.deleted_at if message.deletion is not None else None,
            stored=message,
        )


@strawberry.type(
    description=(
        "A user's ban from a stream's chat: permanent, or a timeout until `expiresAt`. While it "
        "holds, the user can read but not send messages or superlikes."
    )
)
class ChatBan:
    id: strawberry.ID = strawberry.field(description="The ban's id: the stream's and the user's.")
    stream_id: strawberry.ID
    user: UserSnapshot = strawberry.field(description="The banned user, as they were when banned.")
    banned_by: UserSnapshot = strawberry.field(description="Who banned them, as they were then.")
    reason: str | None
    created_at: datetime
    expires_at: datetime | None = strawberry.field(description="When a timeout lifts; null for a permanent ban.")

    @classmethod
    def from_member(cls, member: documents.StreamMember) -> ChatBan:
        assert member.ban is not None
        return cls(
            id=strawberry.ID(member.id),
            stream_id=strawberry.ID(member.stream_id),
            user=UserSnapshot.from_profile(member.user),
            banned_by=UserSnapshot.from_profile(member.ban.banned_by),
            reason=member.ban.reason,
            created_at=member.ban.created_at,
            expires_at=member.ban.expires_at,
        )


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="A chat message and its cursor.")
class ChatMessageEdge:
    cursor: str
    node: ChatMessage


@strawberry.type(description="A page of a stream's chat history, oldest first.")
class ChatMessageConnection:
    edges: list[ChatMessageEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[documents.ChatMessage]) -> ChatMessageConnection:
        edges = [ChatMessageEdge(cursor=encode_cursor(m.seq), node=ChatMessage.from_document(m)) for m in page.items]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next,
                has_previous_page=page.has_previous,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


# -- chatEvents ------------------------------------------------------------------------------


@strawberry.interface(
    description=(
        "An entry of a stream's log as `chatEvents` delivers it. Messages and moderation events "
        "share one numbering: pass the `cursor` of the last entry received as `after` to resume."
    )
)
class ChatLogEvent:
    cursor: str = strawberry.field(
        description="This entry's position in the stream's log, for `chatEvents(after:)` and `messageAdded(after:)`."
    )
    at: datetime = strawberry.field(description="When the entry was stored.")


@strawberry.type(description="A message or superlike was sent.")
class MessageAdded(ChatLogEvent):
    message: ChatMessage


@strawberry.type(
    description=(
        "A message was deleted: drop it from view. Its `MessageAdded` is not delivered to a "
        "subscriber that had not received it yet."
    )
)
class MessageDeleted(ChatLogEvent):
    message_id: strawberry.ID = strawberry.field(description="The deleted message's id.")
    message_cursor: str = strawberry.field(description="The deleted message's cursor (its place in the log).")
    deleted_by: UserSnapshot = strawberry.field(description="Who deleted it: its sender, the owner or a moderator.")
    reason: str | None = strawberry.field(description="Why, as the deleter wrote it (visible to everyone).")


@strawberry.type(description="A user was banned from the chat, for good or until `expiresAt` (a timeout).")
class UserBanned(ChatLogEvent):
    user: UserSnapshot
    banned_by: UserSnapshot
    reason: str | None = strawberry.field(description="Why, as the moderator wrote it (visible to everyone).")
    expires_at: datetime | None = strawberry.field(description="When a timeout lifts; null for a permanent ban.")


@strawberry.type(description="A user's ban was lifted by the owner or a moderator.")
class UserUnbanned(ChatLogEvent):
    user: UserSnapshot
    unbanned_by: UserSnapshot


@strawberry.type(description="The owner appointed a moderator.")
class ModeratorAdded(ChatLogEvent):
    user: UserSnapshot
    by: UserSnapshot


@strawberry.type(description="A moderator was dismissed (by the owner, or by being banned).")
class ModeratorRemoved(ChatLogEvent):
    user: UserSnapshot
    by: UserSnapshot


@strawberry.type(
    description=(
        "The chat's settings changed; these are the settings from then on. The blocked terms "
        "themselves are only in `LiveStream.chatSettings`, for the owner and moderators."
    )
)
class ChatSettingsChanged(ChatLogEvent):
    changed_by: UserSnapshot
    slow_mode_seconds: int = strawberry.field(description="Seconds a viewer waits between two messages; 0: off.")
    chat_enabled: bool = strawberry.field(description="False: only the owner and moderators can send.")
    blocked_term_count: int = strawberry.field(description="How many terms viewers' messages may not contain.")


@strawberry.type(description="The stream ended: the last event, after which the subscription completes.")
class StreamEnded(ChatLogEvent):
    pass


@strawberry.type(
    description=(
        "The stream's live subscribers on every replica changed (at most one per "
        "VIEWER_COUNT_INTERVAL_SECONDS). Not an entry of the log: it has no cursor and is not replayed."
    )
)
class ViewerCountChanged:
    stream_id: strawberry.ID
    viewer_count: int


ChatEvent = Annotated[
    MessageAdded
    | MessageDeleted
    | UserBanned
    | UserUnbanned
    | ModeratorAdded
    | ModeratorRemoved
    | ChatSettingsChanged
    | StreamEnded
    | ViewerCountChanged,
    strawberry.union(
        "ChatEvent",
        description=(
            "What happens in a stream's chat, in order. Every member but `ViewerCountChanged` is "
            "an entry of the stream's log (`ChatLogEvent`: a `cursor` and `at`)."
        ),
    ),
]


def _log_fields(entry: documents.ChatMessage) -> dict[str, Any]:
    return {"cursor": encode_cursor(entry.seq), "at": entry.created_at}


def _profile(profile: documents.PublicProfile | None) -> UserSnapshot:
    # Every moderation event names its target; ``LogEvent.target`` is optional for its type only.
    assert profile is not None
    return UserSnapshot.from_profile(profile)


def _message_deleted(entry: documents.ChatMessage, event: documents.LogEvent) -> MessageDeleted:
    assert event.message_id is not None and event.message_seq is not None
    return MessageDeleted(
        **_log_fields(entry),
        message_id=strawberry.ID(event.message_id),
        message_cursor=encode_cursor(event.message_seq),
        deleted_by=_profile(event.actor),
        reason=event.reason,
    )


def _user_banned(entry: documents.ChatMessage, event: documents.LogEvent) -> UserBanned:
    return UserBanned(
        **_log_fields(entry),
        user=_profile(event.target),
        banned_by=_profile(event.actor),
        reason=event.reason,
        expires_at=event.expires_at,
    )


def _user_unbanned(entry: documents.ChatMessage, event: documents.LogEvent) -> UserUnbanned:
    return UserUnbanned(**_log_fields(entry), user=_profile(event.target), unbanned_by=_profile(event.actor))


def _moderator_added(entry: documents.ChatMessage, event: documents.LogEvent) -> ModeratorAdded:
    return ModeratorAdded(**_log_fields(entry), user=_profile(event.target), by=_profile(event.actor))


def _moderator_removed(entry: documents.ChatMessage, event: documents.LogEvent) -> ModeratorRemoved:
    return ModeratorRemoved(**_log_fields(entry), user=_profile(event.target), by=_profile(event.actor))


def _chat_settings_changed(entry: documents.ChatMessage, event: documents.LogEvent) -> ChatSettingsChanged:
    settings = event.settings or documents.ChatSettings()
    return ChatSettingsChanged(
        **_log_fields(entry),
        changed_by=_profile(event.actor),
        slow_mode_seconds=settings.slow_mode_seconds,
        chat_enabled=settings.chat_enabled,
        blocked_term_count=len(settings.blocked_terms),
    )


_MODERATION_EVENTS: dict[documents.MessageKind, Callable[[documents.ChatMessage, documents.LogEvent], ChatEvent]] = {
    documents.MessageKind.MESSAGE_DELETED: _message_deleted,
    documents.MessageKind.USER_BANNED: _user_banned,
    documents.MessageKind.USER_UNBANNED: _user_unbanned,
    documents.MessageKind.MODERATOR_ADDED: _moderator_added,
    documents.MessageKind.MODERATOR_REMOVED: _moderator_removed,
    documents.MessageKind.CHAT_SETTINGS_CHANGED: _chat_settings_changed,
}


def from_entry(entry: documents.ChatMessage) -> ChatEvent:
    """The ``chatEvents`` event of an entry of a stream's log (``ChatService.events``)."""
    if entry.kind in documents.VISIBLE_KINDS:
        return MessageAdded(**_log_fields(entry), message=ChatMessage.from_document(entry))
    if entry.kind is documents.MessageKind.STREAM_ENDED:
        return StreamEnded(**_log_fields(entry))
    if entry.event is None:  # pragma: no cover - every moderation entry records its event
        raise ValueError(f"entry {entry.seq} of stream {entry.stream_id} ({entry.kind}) has no event")
    return _MODERATION_EVENTS[entry.kind](entry, entry.event)


def chat_event(item: documents.ChatMessage | ViewerCountChanged) -> ChatEvent:
    """A ``chatEvents`` item as its GraphQL type: a log entry converted, a viewer count as it is."""
    return item if isinstance(item, ViewerCountChanged) else from_entry(item)
