"""The GraphQL schema: thin resolvers over the chat service."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from functools import partial
from typing import Any

import strawberry
from graphql import ASTValidationRule, GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.types import ExecutionContext, ExecutionResult, Info
from strawberry.types.graphql import OperationType

from gql_api import documents
from gql_api.documents import isoformat_z
from gql_api.errors import ApiError, BadUserInput, report
from gql_api.graphql.context import Context
from gql_api.graphql.fanout import fan_out
from gql_api.graphql.limits import (
    DocumentCache,
    QuietExecutionContext,
    RequestLimits,
    alias_limit_rule,
    depth_limit_rule,
    extensions_runner,
)
from gql_api.graphql.types import (
    ChatBan,
    ChatEvent,
    ChatMessage,
    ChatMessageConnection,
    ChatSettings,
    LiveStream,
    User,
    ViewerCountChanged,
    chat_event,
)
from gql_api.merge import interleave
from gql_api.metrics import Metrics
from gql_api.pagination import PageRequest, decode_cursor
from gql_api.settings import Settings

ChatInfo = Info[Context, None]
DATETIME_SCALAR = strawberry.scalar(
    name="DateTime",
    description="An ISO 8601 time in UTC with milliseconds, e.g. 2026-01-15T10:30:00.000Z.",
    serialize=isoformat_z,
    parse_value=datetime.fromisoformat,
)
# Parsed and validated documents are remembered by query text (clients send few distinct
# ones), within an estimate of the memory they hold: at most 16 MiB per schema, and no
# document over 1 MiB (about 1,600 tokens, or a long string literal) is kept at all.
DOCUMENT_CACHE_BYTES = 16 * 1024 * 1024
DOCUMENT_CACHE_ENTRY_BYTES = 1024 * 1024
_REQUEST_ERRORS = (CannotGetOperationTypeError, InvalidOperationTypeError, MissingQueryError)


@strawberry.type
class Query:
    @strawberry.field(description="A page of a stream's chat history, oldest first. No arguments: the newest 50.")
    async def chat_messages(
        self,
        info: ChatInfo,
        stream_id: strawberry.ID,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> ChatMessageConnection:
        info.context.user  # noqa: B018 - every operation needs an authenticated caller
        request = PageRequest.from_relay(first=first, after=after, last=last, before=before)
        page = await info.context.chat.list_messages(str(stream_id), request)
        return ChatMessageConnection.from_page(page)

    @strawberry.field(description="A live stream, or null when there is none with this id.")
    async def live_stream(self, info: ChatInfo, id: strawberry.ID) -> LiveStream | None:
        info.context.user  # noqa: B018
        stream = await info.context.chat.find_stream(str(id))
        return LiveStream.from_document(stream) if stream else None

    @strawberry.field(
        description="The bans holding in a stream's chat now, oldest first: its owner and moderators only."
    )
    async def chat_bans(self, info: ChatInfo, stream_id: strawberry.ID) -> list[ChatBan]:
        bans = await info.context.chat.moderation.bans(info.context.user, str(stream_id))
        return [ChatBan.from_member(ban) for ban in bans]

    @strawberry.field(description="The authenticated caller.")
    def me(self, info: ChatInfo) -> User:
        return User.from_document(info.context.user)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Send a chat message (1 to 500 characters after trimming).")
    async def send_chat_message(
        self,
        info: ChatInfo,
        stream_id: strawberry.ID,
        content: str,
        client_message_id: str | None = None,
    ) -> ChatMessage:
        message = await info.context.chat.send_message(info.context.user, str(stream_id), content, client_message_id)
        return ChatMessage.from_document(message)

    @strawberry.mutation(description="Superlike a stream: once per user per stream.")
    async def send_superlike(self, info: ChatInfo, stream_id: strawberry.ID) -> ChatMessage:
        message = await info.context.chat.send_superlike(info.context.user, str(stream_id))
        return ChatMessage.from_document(message)

    @strawberry.mutation(description="Start a LIVE stream owned by the caller.")
    async def create_live_stream(self, info: ChatInfo, title: str) -> LiveStream:
        stream = await info.context.chat.create_stream(info.context.user, title)
        return LiveStream.from_document(stream)

    @strawberry.mutation(description="End a LIVE stream; only its owner may.")
    async def end_live_stream(self, info: ChatInfo, id: strawberry.ID) -> LiveStream:
        stream = await info.context.chat.end_stream(info.context.user, str(id))
        return LiveStream.from_document(stream)

    @strawberry.mutation(
        description="Appoint a moderator of a stream: its owner only. Lifts the user's ban; idempotent."
    )
    async def add_moderator(self, info: ChatInfo, stream_id: strawberry.ID, user_id: strawberry.ID) -> LiveStream:
        stream = await info.context.chat.moderation.add_moderator(info.context.user, str(stream_id), str(user_id))
        return LiveStream.from_document(stream)

    @strawberry.mutation(description="Dismiss a moderator of a stream: its owner only. Idempotent.")
    async def remove_moderator(self, info: ChatInfo, stream_id: strawberry.ID, user_id: strawberry.ID) -> LiveStream:
        stream = await info.context.chat.moderation.remove_moderator(info.context.user, str(stream_id), str(user_id))
        return LiveStream.from_document(stream)

    @strawberry.mutation(
        description=(
            "Ban a user from a stream's chat: the owner and moderators (a moderator cannot ban "
            "the owner or another moderator). Without `durationSeconds` the ban is permanent; "
            "with it (1 to 1209600, 14 days) it is a timeout that lifts itself. `reason`: up to "
            "500 characters. Banning again replaces the ban."
        )
    )
    async def ban_user(
        self,
        info: ChatInfo,
        stream_id: strawberry.ID,
        user_id: strawberry.ID,
        duration_seconds: int | None = None,
        reason: str | None = None,
    ) -> ChatBan:
        ban = await info.context.chat.moderation.ban(
            info.context.user, str(stream_id), str(user_id), duration_seconds, reason
        )
        return ChatBan.from_member(ban)

    @strawberry.mutation(
        description="Lift a user's ban: the owner and moderators. True when a ban held, false when none did."
    )
    async def unban_user(self, info: ChatInfo, stream_id: strawberry.ID, user_id: strawberry.ID) -> bool:
        return await info.context.chat.moderation.unban(info.context.user, str(stream_id), str(user_id))

    @strawberry.mutation(
        description=(
            "Change a stream's chat settings: its owner and moderators. An omitted argument keeps "
            "its setting. `slowModeSeconds`: 0 (off) or 3 to 120 seconds between two messages of "
            "one viewer. `chatEnabled: false`: only the owner and moderators can send. "
            "`blockedTerms` replaces the list: at most 500 terms of 1 to 100 characters, trimmed, "
            "each kept once (compared case-insensitively after Unicode NFKC normalisation); a "
            "viewer's message holding one is refused with CONTENT_BLOCKED. Viewers are held to "
            "these settings, the owner and moderators are not. A change is recorded."
        )
    )
    async def update_chat_settings(
        self,
        info: ChatInfo,
        stream_id: strawberry.ID,
        slow_mode_seconds: int | None = None,
        chat_enabled: bool | None = None,
        blocked_terms: list[str] | None = None,
    ) -> ChatSettings:
        stream, _ = await info.context.chat.moderation.update_settings(
            info.context.user,
            str(stream_id),
            slow_mode_seconds=slow_mode_seconds,
            chat_enabled=chat_enabled,
            blocked_terms=blocked_terms,
        )
        return ChatSettings.from_document(stream)

    @strawberry.mutation(
        description=(
            "Delete a chat message: its sender, the stream's owner, or a moderator (a moderator "
            "cannot delete the owner's or another moderator's message). The message stays in "
            "history as a tombstone (empty `content`, `deletedAt` set) so cursors stay valid, and "
            "`messageAdded` never sends it again. `reason`: up to 500 characters. Idempotent."
        )
    )
    async def delete_chat_message(self, info: ChatInfo, id: strawberry.ID, reason: str | None = None) -> ChatMessage:
        message = await info.context.chat.delete_message_by_id(info.context.user, str(id), reason)
        return ChatMessage.from_document(message)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "Every message of the stream after `after` (a message cursor), or created after "
            "subscribing when it is omitted: stored ones first, then live ones, in order, each "
            "once. Completes when the stream ends."
        )
    )
    async def message_added(
        self, info: ChatInfo, stream_id: strawberry.ID, after: str | None = None
    ) -> AsyncGenerator[ChatMessage, None]:
        info.context.user  # noqa: B018
        messages = info.context.chat.subscribe(str(stream_id), after)
        async for item in fan_out(
            info,
            messages,
            renderer=info.context.renderer,
            to_graphql=ChatMessage.from_document,
            identity=lambda message: (message.stream_id, message.seq),
        ):
            yield item  # type: ignore[misc]  # only off our websocket handlers; else nothing

    @strawberry.subscription(
        description=(
            "Everything that happens in the stream's chat, typed: messages, deletions, bans, "
            "unbans, moderator changes, settings changes and the end, each once and in the order "
            "of the stream's log, with its viewer count as it changes. `after`: the cursor of "
            "any entry (a message's included) to replay every later entry first; omitted, from "
            "now. Completes after `StreamEnded`."
        )
    )
    async def chat_events(
        self, info: ChatInfo, stream_id: strawberry.ID, after: str | None = None
    ) -> AsyncGenerator[ChatEvent, None]:
        info.context.user  # noqa: B018
        chat = info.context.chat
        # Refused before anything is sent: the viewer count would otherwise come first.
        if after is not None:
            decode_cursor(after, argument="after")
        key = str((await chat.get_stream(str(stream_id))).id)
        counts = (
            ViewerCountChanged(stream_id=strawberry.ID(key), viewer_count=n)
            async for n in info.context.viewers.changes(key)
        )
        events = interleave(chat.events(key, after), counts)
        async for item in fan_out(
            info,
            events,
            renderer=info.context.renderer,
            to_graphql=chat_event,
            identity=_event_identity,
        ):
            yield item  # type: ignore[misc]  # only off our websocket handlers; else nothing


def _event_identity(item: documents.ChatMessage | ViewerCountChanged) -> tuple[object, ...]:
    """What names a ``chatEvents`` item across its subscribers (see ``fan_out``)."""
    if isinstance(item, ViewerCountChanged):
        return ("viewers", item.stream_id, item.viewer_count)
    return (item.stream_id, item.seq)


class ChatSchema(strawberry.Schema):
    """The schema, with every error given a ``code`` and ``statusCode`` and the unexpected masked."""

    document_cache: DocumentCache  # parsed and validated documents, set by build_schema
    metrics: Metrics  # set by ``build_schema``; errors are counted by code

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        for error in errors:
            api_error = _classify(error)
            self.metrics.error(api_error.code, "graphql")
            error.message = api_error.message
            error.extensions = {**(error.extensions or {}), **api_error.extensions}
            error.original_error = None

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Strawberry's, refusing subscriptions: ``execute`` serves HTTP (subscriptions run over
        websockets, through ``subscribe``), where Strawberry would run one as a query and fail
        on the stream it returns. Its view answers the refusal with a 400."""
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES) - {OperationType.SUBSCRIPTION}
        return await super().execute(
            query, variable_values, context_value, root_value, operation_name, allowed, operation_extensions
        )

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        # The request limits' steps called directly, not through Strawberry's per-hook wrappers.
        return extensions_runner(execution_context, extensions)


def _classify(error: GraphQLError) -> ApiError:
    """What the client is told: the request's own faults as BAD_USER_INPUT, the rest reported."""
    original = error.original_error
    if original is None or isinstance(original, (GraphQLError, *_REQUEST_ERRORS)):
        return BadUserInput(error.message)  # syntax, validation, variables: the request is wrong
    if error.path is None and error.nodes and not isinstance(original, ApiError):
        return BadUserInput(error.message)  # a variable's value failed to parse
    return report(original, error.path)


def build_schema(settings: Settings | None = None, metrics: Metrics | None = None) -> ChatSchema:
    """The schema with the request limits of ``settings`` (the defaults when None).

    The limits are schema extensions, so they apply to every operation however it arrives:
    HTTP, and subscriptions over websockets. A request over a limit fails validation
    (BAD_USER_INPUT) before anything runs. Production also turns introspection and field
    suggestions off.
    """
    # model_construct: the declared defaults, without reading the environment.
    settings = settings or Settings.model_construct()
    # The limit rules are built once and shared: a subscription keeps its operation's
    # extensions alive for hours, and equal rules let validation results be cached.
    limit_rules: list[type[ASTValidationRule]] = [
        depth_limit_rule(settings.graphql_max_depth),
        alias_limit_rule(settings.graphql_max_aliases),
    ]
    if settings.production:
        # Strawberry's DisableIntrospection's rule, in the one extension: a second extension
        # would send every operation through Strawberry's slower runner (``LimitsRunner``).
        limit_rules.append(NoSchemaIntrospectionCustomRule)
    document_cache = DocumentCache(DOCUMENT_CACHE_BYTES, DOCUMENT_CACHE_ENTRY_BYTES)
    # A factory, not an instance: Strawberry builds a fresh extension for each operation.
    extensions: list[Any] = [
        partial(
            RequestLimits,
            document_cache,
            max_tokens=settings.graphql_max_tokens,
            rules=limit_rules,
            hide_suggestions=settings.production,
        ),
    ]
    batch = settings.graphql_batch_max_operations
    schema = ChatSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=QuietExecutionContext if settings.production else None,
        config=StrawberryConfig(
            disable_field_suggestions=settings.production,
            scalar_map={datetime: DATETIME_SCALAR},
            batching_config={"max_operations": batch} if batch else None,
        ),
    )
    schema.document_cache = document_cache
    schema.metrics = metrics or Metrics()
    return schema
