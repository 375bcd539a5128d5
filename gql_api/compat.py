"""The one place that bends around the embedded server's (nx-27017 0.8.1) quirks.

Everything here is also correct, and means the same, on a real MongoDB:

- Equality is written ``{"field": {"$eq": value}}``: nx-27017 scans the table for the short
  form ``{"field": value}`` but uses an index for ``$eq``.
- References between documents are strings, never ObjectIds: nx-27017 matches nothing on
  equality against a non-``_id`` field holding an ObjectId.
- No compound index contains ``_id`` (nx-27017 then fails every later insert), and no index
  is partial (nx-27017 ignores the filter): uniqueness that would be partial is expressed
  with a ``dedup_key`` that is unique by construction (see ``documents.ChatMessage``).
- History pages range over ``(stream_id, seq)``, never over ``_id``: an ``_id`` range with an
  ``_id`` sort scans the table on nx-27017.
- nx-27017 answers a change stream's ``getMore`` at once when there is nothing new, where
  MongoDB waits up to ``maxAwaitTimeMS``: a follower pauses up to ``EMPTY_BATCH_PAUSE_SECONDS``
  after an empty batch rather than spin, less however long the database waited (on MongoDB
  the wait already happened), and the messages' follower is woken by its own process's
  writes (``delivery``).
- Counting is a find of ids, not ``count_documents``: nx-27017 runs that aggregation
  as a table scan (measured: 5 s over 40,000 messages), but answers an indexed find in
  milliseconds (``count_matching``).
- A top-level datetime written by ``$set`` is stored as text (and a boolean as 0 or 1, which
  still compares equal to ``True``/``False``); one inside a subdocument written whole keeps its
  type. Times that are updated live in subdocuments (see ``store``: moderation).
- Projections name whole fields, never a dotted path: nx-27017 returns ``{"sender.id": 1}``
  as a top-level key ``"sender.id"`` instead of a ``sender`` subdocument.
- A change event's document id is read from ``documentKey._id``: nx-27017 sends
  ``fullDocument._id`` as a dict, and the rest of the document as extended JSON. Its
  duplicate-key errors name the index but not its key pattern. Its update events have no
  ``updateDescription``, but carry the whole updated document (``change_event_updated_fields``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

EMPTY_BATCH_PAUSE_SECONDS = 0.05


def eq(value: Any) -> dict[str, Any]:
    """An equality condition that uses an index on both servers."""
    return {"$eq": value}


def parse_object_id(value: str) -> ObjectId | None:
    """The ObjectId an opaque id names, or None when it cannot name one."""
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


def change_event_document(event: dict[str, Any]) -> dict[str, Any]:
    """The stored document an insert event carries, with its real ``_id`` and BSON types."""
    document: dict[str, Any] = _from_extended_json(event["fullDocument"])
    document["_id"] = event["documentKey"]["_id"]
    return document


def change_event_updated_fields(event: dict[str, Any]) -> dict[str, Any]:
    """The fields an update event says were set, with BSON types: MongoDB's
    ``updateDescription.updatedFields``, or, from nx-27017 (which sends no description), the
    whole updated document, which holds them too."""
    fields = (event.get("updateDescription") or {}).get("updatedFields")
    if fields is None:
        fields = event.get("fullDocument") or {}
    result: dict[str, Any] = _from_extended_json(fields)
    return result


def _from_extended_json(value: Any) -> Any:
    """nx-27017 sends a change event's document as extended JSON: ``{"$date": ...}`` and tagged
    ObjectIds. Turn those back into datetimes and ObjectIds; real BSON passes through."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$date"), str):
            moment = datetime.fromisoformat(value["$date"].replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if value.get("__neosqlite_objectid__") is True and "id" in value:
            return ObjectId(value["id"])
        return {key: _from_extended_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_extended_json(item) for item in value]
    return value


async def count_matching(collection: AsyncCollection[dict[str, Any]], condition: dict[str, Any]) -> int:
    """How many documents match ``condition``, through the index that covers it.

    Only for small counts (a stream's superlikes: one per viewer at most); on MongoDB
    ``count_documents`` would be the choice.
    """
    return len([1 async for _ in collection.find(condition, {"_id": 1})])


def is_duplicate_of(exc: DuplicateKeyError | Mapping[str, Any], field: str) -> bool:
    """Whether a duplicate-key error is about an index over ``field``.

    ``exc`` is the error of a single write, or one of the ``writeErrors`` of a bulk write.
    MongoDB names the index and its key pattern (its message also quotes the duplicate
    values, so it is not searched); nx-27017 names only its own index name, which contains
    the field names.
    """
    details = (exc.details or {}) if isinstance(exc, DuplicateKeyError) else exc
    if pattern := details.get("keyPattern"):
        return field in pattern
    return field in str(details.get("errmsg", exc))
