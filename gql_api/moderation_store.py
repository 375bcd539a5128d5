"""Every query moderation makes, in one place: ``ModerationStore``.

Kept apart from the rest until the app's store layer owns every query; then these methods move
there as they are. The same rules hold: equality is ``compat.eq``, references are strings,
every operation is awaited through ``detached``, and no ``DuplicateKeyError`` leaves here.

A stream's roles and bans are one ``StreamMember`` document per (stream, user), found by its
id: a send reads one document through the ``_id`` index to learn both whether its sender is
banned and whether they moderate. Its times are inside its subdocuments (``appointment``,
``ban``): nx-27017 stores a top-level datetime written by ``$set`` as text (see ``compat``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from gql_api.compat import eq, parse_object_id
from gql_api.database import detached
from gql_api.documents import Appointment, ChatBanRecord, ModerationAction, PublicProfile, StreamMember, User

_EPOCH = datetime.fromtimestamp(0, UTC)


class TargetIsModerator(Exception):
    """A write that must not touch a moderator found one."""


def member_key(stream_id: str, user_id: str) -> str:
    """The id of a user's member document in a stream."""
    return f"{stream_id}:{user_id}"


def _identity(stream_id: str, user: PublicProfile) -> dict[str, Any]:
    return {"stream_id": stream_id, "user_id": user.id, "user": user.model_dump()}


def _member(raw: dict[str, Any] | None) -> StreamMember | None:
    return StreamMember.model_validate(raw) if raw is not None else None


class ModerationStore:
    """The queries of moderation: members (moderators and bans), the action log, users by id.

    Writers return the member document as it was *before* the write (None when there was
    none), so the caller can tell whether anything changed and record only what did.
    """

    @staticmethod
    def _members() -> Any:
        return StreamMember.get_pymongo_collection()

    async def member(self, stream_id: str, user_id: str) -> StreamMember | None:
        """The user's member document in the stream, or None (a plain viewer)."""
        raw = await detached(self._members().find_one({"_id": member_key(stream_id, user_id)}))
        return _member(raw)

    async def moderators(self, stream_id: str) -> list[StreamMember]:
        """The stream's moderators, oldest appointment first."""
        cursor = self._members().find({"stream_id": eq(stream_id), "moderator": eq(True)})
        members = [StreamMember.model_validate(row) for row in await detached(cursor.to_list())]
        return sorted(members, key=lambda m: m.appointment.created_at if m.appointment else _EPOCH)

    async def banned(self, stream_id: str) -> list[StreamMember]:
        """The stream's members that have a ban stored (expired ones included)."""
        rows = await detached(self._members().find({"stream_id": eq(stream_id)}).to_list())
        members = (StreamMember.model_validate(row) for row in rows)
        return [member for member in members if member.ban is not None]

    async def appoint(
        self, stream_id: str, user: PublicProfile, appointment: Appointment, *, unless_moderator: bool
    ) -> StreamMember | bool | None:
        """Make the user a moderator of the stream, lifting any ban of theirs. With
        ``unless_moderator``, only if they are not one already: False when they are."""
        fields = {**_identity(stream_id, user), "moderator": True, "appointment": appointment.model_dump(), "ban": None}
        condition: dict[str, Any] = {"_id": member_key(stream_id, user.id)}
        if unless_moderator:
            condition["moderator"] = eq(False)
        return await self._set_or_insert(condition, fields)

    async def dismiss(self, stream_id: str, user_id: str) -> StreamMember | None:
        """Make the user a viewer again, if they moderate: None when they did not."""
        raw = await detached(
            self._members().find_one_and_update(
                {"_id": member_key(stream_id, user_id), "moderator": eq(True)},
                {"$set": {"moderator": False, "appointment": None}},
                return_document=ReturnDocument.BEFORE,
            )
        )
        return _member(raw)

    async def ban(
        self, stream_id: str, user: PublicProfile, ban: ChatBanRecord, *, unless_moderator: bool
    ) -> StreamMember | None:
        """Store the user's ban (replacing one they had), making them a viewer.

        With ``unless_moderator`` the ban is stored only if the user does not moderate, in the
        same atomic write: ``TargetIsModerator`` otherwise.
        """
        condition: dict[str, Any] = {"_id": member_key(stream_id, user.id)}
        if unless_moderator:
            condition["moderator"] = eq(False)
        fields = {**_identity(stream_id, user), "moderator": False, "appointment": None, "ban": ban.model_dump()}
        return await self._set_or_insert(condition, fields)

    async def _set_or_insert(self, condition: dict[str, Any], fields: dict[str, Any]) -> StreamMember | bool | None:
        """Set ``fields`` on the member document matching ``condition`` (which names its
        ``_id``), or insert it when there is none: the document as it was before (None when
        inserted), or False when one exists that the condition does not match.

        Not an upsert: nx-27017 silently does nothing when an upsert's insert collides with an
        existing id, where MongoDB raises; an insert raises on both.
        """
        for _ in range(2):
            raw = await detached(
                self._members().find_one_and_update(condition, {"$set": fields}, return_document=ReturnDocument.BEFORE)
            )
            if raw is not None:
                return _member(raw)
            try:
                await detached(self._members().insert_one({"_id": condition["_id"], **fields}))
            except DuplicateKeyError:
                continue  # it exists now: set it if it matches
            return None
        raise TargetIsModerator()  # it exists, and the condition does not match it

    async def unban(self, stream_id: str, user_id: str) -> StreamMember | None:
        """Remove the user's ban, if they have one stored."""
        raw = await detached(
            self._members().find_one_and_update(
                {"_id": member_key(stream_id, user_id)},
                {"$set": {"ban": None}},
                return_document=ReturnDocument.BEFORE,
            )
        )
        return _member(raw)

    async def record(self, action: ModerationAction) -> None:
        """Append an action to the moderation log."""
        await detached(action.insert())

    async def actions(self, stream_id: str) -> list[ModerationAction]:
        """The stream's moderation log, oldest first."""
        query = ModerationAction.find({"stream_id": eq(stream_id)}).sort("+created_at")
        return await detached(query.to_list())

    async def user(self, user_id: str) -> User | None:
        """The user with this id, or None (also when ``user_id`` cannot be an id)."""
        object_id = parse_object_id(user_id)
        if object_id is None:
            return None
        return await detached(User.get(object_id))

    async def users(self, user_ids: list[str]) -> list[User]:
        """The users with these ids that exist, in the order given."""
        object_ids = [oid for oid in map(parse_object_id, user_ids) if oid is not None]
        if not object_ids:
            return []
        rows = await detached(User.find({"_id": {"$in": object_ids}}).to_list())
        by_id = {str(user.id): user for user in rows}
        return [by_id[user_id] for user_id in user_ids if user_id in by_id]
