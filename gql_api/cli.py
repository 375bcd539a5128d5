"""The ``gql-api`` command line: serve, demo data, users, tokens and the schema file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from strawberry.printer import print_schema

from gql_api.app import App, create_app
from gql_api.auth import Authenticator
from gql_api.database import open_database
from gql_api.delivery import Delivery
from gql_api.demo import database_is_empty, ensure_demo_data
from gql_api.errors import ApiError, ConfigurationError
from gql_api.graphql.schema import build_schema
from gql_api.graphql.websockets import GOING_AWAY_CLOSE_CODE
from gql_api.hub import MessageHub
from gql_api.logs import configure_logging, uvicorn_log_config
from gql_api.service import ChatService
from gql_api.settings import Settings, load_settings
from gql_api.state import Services
from gql_api.users import create_user, get_user

logger = logging.getLogger(__name__)

SCHEMA_FILE = Path("schema.graphql")


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


def uvicorn_config(app: Any, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """How ``gql-api serve`` runs ``app`` under uvicorn."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=uvicorn_log_config(settings.log_format),
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        # The app closes a websocket message over the body cap with 1009 itself, whatever server
        # runs it; uvicorn refuses it too (also 1009), before buffering up to its default 16 MiB.
        ws_max_size=settings.graphql_max_body_bytes,
    )


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    configure_logging(settings.log_format)

    async def banner(services: Services) -> None:
        if settings.production:
            return
        lines = ["", "  gql_api is running (development)", f"  GraphiQL:      http://{args.host}:{args.port}/graphql"]
        if await database_is_empty():
            demo = await ensure_demo_data(services.chat)
            token = services.authenticator.issue(str(demo.users["alice"].id))
            lines += [f"  Demo stream:   {demo.stream_id}", f"  Token (alice): {token}"]
        lines += ["  Tokens:        gql-api demo --json", ""]
        print("\n".join(lines), flush=True)

    app = create_app(settings, on_startup=[banner])
    config = uvicorn_config(app, settings, host=args.host, port=args.port)
    # Each open subscription keeps a few hundred small objects alive; with thousands of them
    # the collector's default thresholds stop the event loop for whole seconds (measured in
    # bench/). Collect the young generation less often, and freeze what start-up made.
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        GracefulServer(config, app).run()


async def _with_database(settings: Settings, work: Callable[[ChatService], Awaitable[None]]) -> None:
    async with open_database(settings):
        hub = MessageHub()
        # No subscribers in a one-off command: what it stores is delivered in-process, to no one.
        await work(ChatService(hub, Delivery(hub)))


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    async def work(chat: ChatService) -> None:
        demo = await ensure_demo_data(chat)
        data = demo.as_json(Authenticator(settings))
        if args.json:
            print(json.dumps(data))
        else:
            print(f"Demo stream: {data['streamId']}")
            for username, user in data["users"].items():  # type: ignore[union-attr]
                print(f"{username}: {user['token']}")

    asyncio.run(_with_database(settings, work))


def _user_create(settings: Settings, args: argparse.Namespace) -> None:
    async def work(chat: ChatService) -> None:
        user = await create_user(
            args.username, name=args.name or "", surname=args.surname or "", photo_url=args.photo_url
        )
        print(json.dumps({"id": str(user.id), "username": user.username}))

    asyncio.run(_with_database(settings, work))


def _token(settings: Settings, args: argparse.Namespace) -> None:
    async def work(chat: ChatService) -> None:
        user = await get_user(args.username)
        print(Authenticator(settings).issue(str(user.id), ttl=timedelta(seconds=args.ttl)))

    asyncio.run(_with_database(settings, work))


def _export_schema(settings: Settings, args: argparse.Namespace) -> None:
    Path(args.output).write_text(schema_sdl())
    print(f"wrote {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gql-api", description="Live-stream chat API")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (GraphiQL at /graphql in development)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        args.handler(settings, args)
    except (ConfigurationError, ApiError) as exc:
        print(f"gql-api: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
