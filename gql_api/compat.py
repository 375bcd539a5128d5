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
- A change event's document id is read from ``documentKey._id``: nx-27017 sends
  ``fullDocument._id`` as a dict.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from bson.errors import InvalidId


def eq(value: Any) -> dict[str, Any]:
    """An equality condition that uses an index on both servers."""
    return {"$eq": value}


def parse_object_id(value: str) -> ObjectId | None:
    """The ObjectId an opaque id names, or None when it cannot name one."""
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


def change_event_document_id(event: dict[str, Any]) -> Any:
    """The id of the document a change event is about."""
    return event["documentKey"]["_id"]
