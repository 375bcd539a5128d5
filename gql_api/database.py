"""Opening the database: the embedded server or ``MONGODB_URI``, one client, Beanie bound to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gql_api.documents import DOCUMENT_MODELS
from gql_api.embedded import EmbeddedMongo
from gql_api.settings import Settings

logger = logging.getLogger(__name__)

# The database as this app opens it: documents are plain dicts until Beanie reads them.
Database = AsyncDatabase[dict[str, Any]]


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """Connect (starting the embedded server when no URI is set), create indexes, yield the db."""
    embedded: EmbeddedMongo | None = None
    if settings.mongodb_uri is None:
        embedded = EmbeddedMongo(settings.data_dir)
        uri = await asyncio.to_thread(embedded.start)
    else:
        uri = settings.mongodb_uri.get_secret_value()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongodb_server_selection_timeout_ms,
        timeoutMS=settings.mongodb_operation_timeout_ms,
        appname="gql-api",
    )
    try:
        database = client[settings.mongodb_db]
        await init_beanie(database=database, document_models=DOCUMENT_MODELS)
        yield database
    finally:
        await client.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
