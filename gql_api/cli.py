"""The ``gql-api`` command line: serve, demo data, users, tokens and the schema file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from strawberry.printer import print_schema
from uvicorn.supervisors import Multiprocess

from gql_api.app import App, create_app
from gql_api.auth import Authenticator
from gql_api.database import open_database
from gql_api.delivery import Delivery
from gql_api.demo import database_is_empty, ensure_demo_data
from gql_api.embedded import EmbeddedMongo
from gql_api.errors import ApiError, ConfigurationError
from gql_api.graphql.schema import build_schema
from gql_api.graphql.websockets import GOING_AWAY_CLOSE_CODE
from gql_api.hub import MessageHub
from gql_api.logs import configure_logging, uvicorn_log_config
from gql_api.service import ChatService
from gql_api.settings import Settings, load_settings
from gql_api.state import Services
from gql_api.store import ChatStore
from gql_api.users import create_user, get_user
from gql_api.wsprotocol import WebSocketProtocol

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_FILE = Path("schema.graphql")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def schema_sdl() -> str:
    """The schema as SDL, exactly as ``schema.graphql`` holds it."""
    return print_schema(build_schema()) + "\n"


class GracefulServer(uvicorn.Server):
    """uvicorn, closing websockets with 1001 (going away) on shutdown so clients reconnect to
    another replica, instead of uvicorn's 1012; in-flight HTTP requests still finish."""

    def __init__(self, config: uvicorn.Config, app: App) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: Any = None) -> None:
        await self._app.graphql.connections.close_all(GOING_AWAY_CLOSE_CODE, "Server shutting down")
        await super().shutdown(sockets)


def uvicorn_config(app: Any, settings: Settings, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """How ``gql-api serve`` runs ``app`` under uvicorn (``options``: more of uvicorn's settings)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        # The app closes a websocket message over the body cap with 1009 itself, whatever server
        # runs it; uvicorn refuses it too (also 1009), before buffering up to its default 16 MiB.
        ws_max_size=settings.graphql_max_body_bytes,
        # uvicorn accepts the permessage-deflate every browser offers unless told not to; with
        # it on, WebSocketProtocol negotiates it without context takeover, to share frames.
        ws_per_message_deflate=settings.ws_compression,
        ws=WebSocketProtocol,
        **{"log_config": uvicorn_log_config(settings.log_format), **options},
    )


def _tune_gc() -> None:
    # Each open subscription keeps a few hundred small objects alive; with thousands of them
    # the collector's default thresholds stop the event loop for whole seconds (measured in
    # bench/). Collect the young generation less often, and freeze what start-up made.
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()


async def _banner(settings: Settings, args: argparse.Namespace, chat: ChatService) -> str:
    """The development banner; on an empty database, the demo data is created first."""
    lines = ["", "  gql_api is running (development)", f"  GraphiQL:      http://{args.host}:{args.port}/graphql"]
    if await database_is_empty(chat.store):
        demo = await ensure_demo_data(chat)
        token = Authenticator(settings).issue(str(demo.users["alice"].id))
        lines += [f"  Demo stream:   {demo.stream_id}", f"  Token (alice): {token}"]
    lines += ["  Tokens:        gql-api demo --json", ""]
    return "\n".join(lines)


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    if args.workers > 1:
        _serve_workers(settings, args)
        return
    configure_logging(settings.log_format)

    async def banner(services: Services) -> None:
        if not settings.production:
            print(await _banner(settings, args, services.chat), flush=True)

    app = create_app(settings, on_startup=[banner])
    config = uvicorn_config(app, settings, host=args.host, port=args.port)
    _tune_gc()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        GracefulServer(config, app).run()


def worker_app() -> App:
    """The app of one ``gql-api serve --workers N`` worker process (a uvicorn app factory).

    Every worker builds its own settings from the environment, its own database client, hub and
    change stream: a replica, sharing only the listening socket with the others.
    """
    settings = load_settings()
    configure_logging(settings.log_format, with_pid=True)
    app = create_app(settings)
    _tune_gc()
    return app


def _serve_workers(settings: Settings, args: argparse.Namespace) -> None:
    """Run ``args.workers`` worker processes under uvicorn's supervisor.

    This parent serves nothing itself: it makes sure the embedded database is running before
    any worker starts (they reuse it through the data dir), creates the demo data and prints the
    banner once, and on SIGTERM or Ctrl-C stops the workers, then the embedded database.
    """
    # Until uvicorn's supervisor takes the signals over, SIGTERM unwinds like Ctrl-C, so the
    # embedded server started below is stopped either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    embedded = EmbeddedMongo(settings.data_dir) if settings.mongodb_uri is None else None
    try:
        if embedded is not None:
            embedded.start()
        if not settings.production:
            print(asyncio.run(_with_database(settings, partial(_banner, settings, args))), flush=True)
        config = uvicorn_config(
            "gql_api.cli:worker_app",
            settings,
            host=args.host,
            port=args.port,
            factory=True,
            workers=args.workers,
            log_config=uvicorn_log_config(settings.log_format, with_pid=True),
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()


async def _with_database(settings: Settings, work: Callable[[ChatService], Awaitable[T]]) -> T:
    async with open_database(settings):
        store = ChatStore()
        hub = MessageHub(store)
        # No subscribers in a one-off command: what it stores is delivered in-process, to no one.
        return await work(ChatService(hub, Delivery(hub), store=store))


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    async def work(chat: ChatService) -> None:
        demo = await ensure_demo_data(chat)
        data = demo.as_json(Authenticator(settings))
        if args.json:
            print(json.dumps(data))
        else:
            print(f"Demo stream: {data['streamId']}")
            for username, user in data["users"].items():
                print(f"{username}: {user['token']}")

    asyncio.run(_with_database(settings, work))


def _user_create(settings: Settings, args: argparse.Namespace) -> None:
    async def work(chat: ChatService) -> None:
        user = await create_user(
            chat.store, args.username, name=args.name or "", surname=args.surname or "", photo_url=args.photo_url
        )
        print(json.dumps({"id": str(user.id), "username": user.username}))

    asyncio.run(_with_database(settings, work))


def _token(settings: Settings, args: argparse.Namespace) -> None:
    async def work(chat: ChatService) -> None:
        user = await get_user(chat.store, args.username)
        print(Authenticator(settings).issue(str(user.id), ttl=timedelta(seconds=args.ttl)))

    asyncio.run(_with_database(settings, work))


def _export_schema(settings: Settings, args: argparse.Namespace) -> None:
    Path(args.output).write_text(schema_sdl())
    print(f"wrote {args.output}")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gql-api", description="Live-stream chat API")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (GraphiQL at /graphql in development)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes (about one per core); each is a replica with its own subscribers",
    )
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="make sure the demo data exists and print tokens")
    demo.add_argument("--json", action="store_true", help="print the data as JSON")
    demo.set_defaults(handler=_demo)

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    user_create = user.add_parser("create", help="add a user")
    user_create.add_argument("username")
    user_create.add_argument("--name")
    user_create.add_argument("--surname")
    user_create.add_argument("--photo-url")
    user_create.set_defaults(handler=_user_create)

    token = commands.add_parser("token", help="print a token for an existing user")
    token.add_argument("username")
    token.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    token.set_defaults(handler=_token)

    export = commands.add_parser("export-schema", help="write the GraphQL schema as SDL")
    export.add_argument("--output", default=str(SCHEMA_FILE))
    export.set_defaults(handler=_export_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        settings = load_settings()
        args.handler(settings, args)
    except (ConfigurationError, ApiError) as exc:
        print(f"gql-api: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
