"""Typed configuration, read from the environment once, in the app factory or the CLI."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from strawberry.http.websocket_origin import normalize_allowed_origins

from gql_api.errors import ConfigurationError

MIN_SECRET_BYTES = 32
DEV_SECRET_FILE = "jwt-secret"


class Settings(BaseSettings):
    """Every knob of the service; environment variables use the upper-case field names."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    app_env: Literal["development", "production"] = "development"
    mongodb_uri: SecretStr | None = None
    mongodb_db: str = "gql_api"
    gql_api_data_dir: Path = Path(".gql-api")
    mongodb_server_selection_timeout_ms: int = Field(default=5000, ge=100)
    # Every database operation, end to end: a server that accepts but never answers (frozen,
    # or cut off mid-connection) fails the operation after this long instead of hanging it.
    mongodb_operation_timeout_ms: int = Field(default=5000, ge=100)

    jwt_secret: SecretStr | None = None
    jwt_algorithm: Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512"] = "HS256"
    jwt_public_key: SecretStr | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=5, ge=0, le=60)

    subscriber_queue_size: int = Field(default=1000, ge=1)
    ws_connection_init_timeout_seconds: float = Field(default=3.0, gt=0)
    ws_ping_interval_seconds: float = Field(default=15.0, gt=0)
    ws_max_subscriptions: int = Field(default=100, ge=1)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # permessage-deflate on websockets. Off: every frame is deflated once per subscriber (a
    # shared rendering cannot be shared compressed), which doubles the CPU per delivery and
    # adds ~40 KiB of zlib state per idle connection; chat frames are small anyway.
    ws_compression: bool = False

    # GraphQL request limits: every request, over HTTP and websockets, is checked against them.
    graphql_max_depth: int = Field(default=10, ge=1)
    graphql_max_aliases: int = Field(default=15, ge=0)
    graphql_max_tokens: int = Field(default=2000, ge=1)
    graphql_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # 0 turns batching (a JSON list of operations in one POST) off.
    graphql_batch_max_operations: int = Field(default=0, ge=0)

    # Origins whose pages may call the API from a browser (CORS) and open websockets to it.
    # Empty: none, apart from the API's own origin. Clients without an Origin header (anything
    # but a browser) are never affected.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # At most this many messages per window per user per stream; 0 turns the limit off.
    rate_limit_messages: int = Field(default=20, ge=0)
    rate_limit_window_seconds: int = Field(default=30, ge=1)

    # How often each replica publishes its live subscribers per stream and re-reads everyone's:
    # `LiveStream.viewerCount` (and its change events) is at most this old. A replica's counts
    # expire after 3 intervals without a rewrite, so a dead replica stops counting within 4
    # (30 s at the upper bound).
    viewer_count_interval_seconds: float = Field(default=5.0, gt=0, le=7.5)

    # Operations: /metrics (Prometheus), and the log format of `gql-api serve`.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = Field(default=None, min_length=16)
    log_format: Literal["text", "json"] = "text"

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @property
    def data_dir(self) -> Path:
        return self.gql_api_data_dir

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string; normalise as browsers send origins."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, (list, tuple)):
            origins = [str(origin).strip() for origin in value if str(origin).strip()]
            # Strawberry's own check, so the websocket Origin check and CORS agree on every value.
            return sorted(normalize_allowed_origins(origins))
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        if self.jwt_algorithm.startswith("RS"):
            if self.jwt_public_key is None:
                raise ValueError(f"JWT_ALGORITHM={self.jwt_algorithm} needs JWT_PUBLIC_KEY (PEM)")
        elif self.production:
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"APP_ENV=production needs JWT_SECRET of at least {MIN_SECRET_BYTES} bytes")
        return self

    def verification_key(self) -> str:
        """The key that verifies tokens: the public key for RS*, else the HMAC secret."""
        if self.jwt_algorithm.startswith("RS"):
            assert self.jwt_public_key is not None
            return self.jwt_public_key.get_secret_value()
        return self.signing_key()

    def signing_key(self) -> str:
        """The HMAC secret; in development it is generated once and kept in the data dir."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.production:  # pragma: no cover - the validator refuses this earlier
            raise ConfigurationError("JWT_SECRET is required in production")
        path = self.data_dir / DEV_SECRET_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc
