"""Pydantic models: validation of what comes in, the exact shape of what goes out.

The endpoints build their responses from these models and the OpenAPI document is generated
from them, so the two cannot drift. Responses are converted explicitly from the documents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

from gql_api import documents
from gql_api.documents import isoformat_z
from gql_api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from gql_api.service import MAX_CLIENT_MESSAGE_ID_LENGTH

Timestamp = Annotated[
    datetime,
    PlainSerializer(isoformat_z, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-01-15T10:30:00.000Z"]}),
]


def _title(name: str, field: Any) -> str:
    return field.alias or to_camel(name)


class _Input(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_alias=True, validate_by_name=False, field_title_generator=_title
    )


class _Output(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        field_title_generator=_title,
    )


class SendMessageRequest(_Input):
    """A chat message to send. Unknown keys are rejected."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"content": "Herkese selam!", "clientMessageId": "c-1"}]},
    )
    content: str = Field(description="1 to 500 characters after trimming surrounding whitespace.")
    client_message_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CLIENT_MESSAGE_ID_LENGTH,
        description="Chosen by the client. A retry with the same id and content "
        "returns the original message; the same id with other content is a 409.",
    )


class HistoryQuery(_Input):
    """Query parameters of the history page. Unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="How many messages.")
    before: str | None = Field(None, description="A `nextCursor`: the messages before it.")
    after: str | None = Field(None, description="A `nextCursor` or `pollCursor`: the messages after it.")


class DeleteMessageQuery(_Input):
    """Query parameters of a message's deletion. Unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")
    reason: str | None = Field(
        None, description="Why the message is taken down (up to 500 characters), for the moderation log."
    )


class ProfilePhoto(_Output):
    id: str = Field(alias="_id")
    url: str
    type: str
    variants: dict[str, str] = Field(description="Resized copies by pixel size, e.g. `40`, `76`.")
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def from_document(cls, photo: documents.ProfilePhoto) -> ProfilePhoto:
        return cls(
            id=photo.id,
            url=photo.url,
            type=photo.type,
            variants=dict(photo.variants),
            created_at=photo.created_at,
            updated_at=photo.updated_at,
        )


class Sender(_Output):
    """The sender's public profile when the message was sent."""

    id: str = Field(alias="_id")
    username: str
    name: str
    surname: str
    profile_photo: ProfilePhoto | None
    availability_status: str

    @classmethod
    def from_profile(cls, profile: documents.PublicProfile) -> Sender:
        photo = profile.profile_photo
        return cls(
            id=profile.id,
            username=profile.username,
            name=profile.name,
            surname=profile.surname,
            profile_photo=ProfilePhoto.from_document(photo) if photo is not None else None,
            availability_status=profile.availability_status,
        )


class Message(_Output):
    """A chat message or superlike."""

    id: str = Field(alias="_id")
    stream_id: str
    content: str = Field(description="Empty for a SUPERLIKE, and for a deleted message.")
    kind: Literal["TEXT", "SUPERLIKE"]
    sender: Sender
    created_at: Timestamp
    updated_at: Timestamp
    # Only on a deleted message, so every other message keeps the seed's exact shape.
    deleted_at: Timestamp | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="When the message was deleted (its `content` is then empty); absent while it stands.",
    )

    @classmethod
    def from_document(cls, message: documents.ChatMessage) -> Message:
        return cls(
            id=str(message.id),
            stream_id=message.stream_id,
            content=message.content,
            # Checked when the model validates: STREAM_ENDED, never shown to clients, would fail here.
            kind=cast(Literal["TEXT", "SUPERLIKE"], message.kind.value),
            sender=Sender.from_profile(message.sender),
            created_at=message.created_at,
            updated_at=message.updated_at,
            deleted_at=message.deletion.deleted_at if message.deletion is not None else None,
        )


class MessagePage(_Output):
    """Messages in chronological order, the cursor to continue in the same direction, and where
    and when to poll for newer messages."""

    messages: list[Message]
    next_cursor: str | None = Field(
        description="Without a cursor or with `before`: pass it as `before` for older messages. "
        "With `after`: pass it as `after` for newer ones. Null when there is nothing more that way."
    )
    poll_cursor: str = Field(
        description="Pass it as `after` for the messages newer than this page. Never null: with "
        "no newer message it is the newest message's cursor here, or the position the page was "
        "asked from, so a client polling forward at the live edge keeps its place."
    )
    polling_interval_millis: int = Field(
        ge=0,
        description="How long to wait before asking for `pollCursor`'s page (as YouTube's "
        "`pollingIntervalMillis`): 0 when newer messages are already waiting.",
    )


class ErrorEnvelope(_Output):
    """Every failure: the status in the body too, a summary first, then specifics."""

    is_success: Literal[False]
    status_code: int
    data: None
    errors: list[str] = Field(min_length=1, examples=[["Resource not found"]])
    timestamp: Timestamp
