"""Settings: production refuses to start without a real secret; development makes and keeps one."""

from __future__ import annotations

import pytest

from gql_api.errors import ConfigurationError
from gql_api.settings import load_settings


def test_production_requires_a_secret_of_at_least_32_bytes(monkeypatch, tmp_path):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("GQL_API_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="JWT_SECRET of at least 32 bytes"):
        load_settings()
    monkeypatch.setenv("JWT_SECRET", "short")
    with pytest.raises(ConfigurationError, match="JWT_SECRET"):
        load_settings()
    monkeypatch.setenv("JWT_SECRET", "s" * 32)
    assert load_settings().production


def test_rs256_requires_a_public_key(monkeypatch):
    monkeypatch.setenv("JWT_ALGORITHM", "RS256")
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="JWT_PUBLIC_KEY"):
        load_settings()


def test_development_generates_a_secret_once_and_keeps_it(monkeypatch, tmp_path):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setenv("GQL_API_DATA_DIR", str(tmp_path / "data"))
    first = load_settings().signing_key()
    second = load_settings().signing_key()
    assert first == second and len(first) >= 32
    assert (tmp_path / "data" / "jwt-secret").stat().st_mode & 0o077 == 0


def test_environment_variables_are_read_by_name(monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongodb://db.example:27017")
    monkeypatch.setenv("MONGODB_DB", "chat")
    monkeypatch.setenv("JWT_ISSUER", "https://issuer.example")
    settings = load_settings()
    assert settings.mongodb_uri is not None
    assert settings.mongodb_uri.get_secret_value() == "mongodb://db.example:27017"
    assert "db.example" not in repr(settings)
    assert (settings.mongodb_db, settings.jwt_issuer) == ("chat", "https://issuer.example")


@pytest.mark.parametrize(
    "value",
    ["https://Chat.example:443, http://localhost:3000", '["https://chat.example", "http://localhost:3000"]'],
)
def test_allowed_origins_are_a_comma_separated_or_json_list(monkeypatch, value):
    monkeypatch.setenv("ALLOWED_ORIGINS", value)
    # Normalised as browsers send an Origin header, so CORS and the websocket check agree.
    assert load_settings().allowed_origins == ["http://localhost:3000", "https://chat.example"]


def test_allowed_origins_default_to_none_and_refuse_what_is_not_an_origin(monkeypatch):
    monkeypatch.delenv("ALLOWED_ORIGINS", raising=False)
    assert load_settings().allowed_origins == []
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://chat.example/path")
    with pytest.raises(ConfigurationError, match="allowed_origins"):
        load_settings()


def test_limits_are_read_from_the_environment(monkeypatch):
    defaults = load_settings()
    assert (defaults.graphql_max_depth, defaults.graphql_max_aliases, defaults.graphql_max_tokens) == (10, 15, 2000)
    assert (defaults.graphql_max_body_bytes, defaults.graphql_batch_max_operations) == (65536, 0)
    assert (defaults.rate_limit_messages, defaults.rate_limit_window_seconds) == (20, 30)
    monkeypatch.setenv("RATE_LIMIT_MESSAGES", "0")
    monkeypatch.setenv("RATE_LIMIT_WINDOW_SECONDS", "60")
    monkeypatch.setenv("GRAPHQL_MAX_DEPTH", "5")
    settings = load_settings()
    assert (settings.rate_limit_messages, settings.rate_limit_window_seconds, settings.graphql_max_depth) == (0, 60, 5)


def test_the_viewer_count_interval_keeps_a_dead_replica_counted_30_seconds_at_most(monkeypatch):
    assert load_settings().viewer_count_interval_seconds == 5.0
    monkeypatch.setenv("VIEWER_COUNT_INTERVAL_SECONDS", "7.5")
    assert load_settings().viewer_count_interval_seconds == 7.5  # 4 intervals: 30 s
    for refused in ("8", "0"):
        monkeypatch.setenv("VIEWER_COUNT_INTERVAL_SECONDS", refused)
        with pytest.raises(ConfigurationError, match="viewer_count_interval_seconds"):
            load_settings()
