"""JWT authentication: tokens in, users out. PyJWT's errors are translated here and only here."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from gql_api.documents import User
from gql_api.errors import Unauthenticated
from gql_api.settings import Settings
from gql_api.store import ChatStore
from gql_api.users import UserCache

logger = logging.getLogger(__name__)

REQUIRED_CLAIMS = ["sub", "exp", "iat"]
# Tokens verified recently, remembered so that a client sending many requests with one token
# pays for its signature check once (it was 6% of a busy sender's server CPU).
VERIFIED_TOKENS = 4096


def token_from_header(value: str | None) -> str | None:
    """The token in an ``Authorization`` value: bare (as the original API doc says) or Bearer."""
    if not value:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


TIME_CLAIMS = ("exp", "iat", "nbf")


def _expiry(claims: dict[str, object]) -> datetime:
    """The token's ``exp`` as a moment, once its time claims are known to be real NumericDates.

    PyJWT checks ``int(claim)`` only, so it lets through numeric strings (``"1900000000"``) and
    moments past what ``datetime`` holds (after the year 9999): neither makes a valid token.
    """
    for name in TIME_CLAIMS:
        value = claims.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unauthenticated(f"Authentication required: the token's {name} is not a number")
    try:
        return datetime.fromtimestamp(claims["exp"], UTC)  # type: ignore[arg-type]
    except (OverflowError, OSError, ValueError) as exc:
        raise Unauthenticated("Authentication required: the token's exp is out of range") from exc


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    expires_at: datetime


class Authenticator:
    """Verifies tokens against the configured key, algorithm, issuer and audience."""

    def __init__(
        self,
        settings: Settings,
        store: ChatStore | None = None,
        users: UserCache | None = None,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        # Issuing needs no database; only ``authenticate`` looks the user up (in ``users``
        # first, when a change stream keeps it fresh).
        self.store = store or ChatStore()
        self.users = users or UserCache()
        self._algorithm = settings.jwt_algorithm
        self._verify_key = settings.verification_key()
        self._sign_key = None if self._algorithm.startswith("RS") else settings.signing_key()
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_seconds
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()
        self._clock = clock  # when a remembered token expires (PyJWT reads its own)

    def issue(self, user_id: str, ttl: timedelta = timedelta(hours=12)) -> str:
        """Sign a token for a user (development and CLI; production tokens come from elsewhere)."""
        if self._sign_key is None:
            raise Unauthenticated("this service only verifies RS tokens; it cannot issue them")
        now = datetime.now(UTC)
        claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl}
        if self._issuer:
            claims["iss"] = self._issuer
        if self._audience:
            claims["aud"] = self._audience
        return jwt.encode(claims, self._sign_key, algorithm=self._algorithm)

    def verify(self, token: str | None) -> TokenClaims:
        """The claims of a valid token; Unauthenticated for anything else.

        A token verified before is only checked for expiry again: keyed by its whole text,
        signature included, and nothing else about it can change.
        """
        if not token:
            raise Unauthenticated("Authentication required: send a JWT in the Authorization header")
        known = self._verified.get(token)
        if known is not None:
            if self._clock() > known.expires_at + timedelta(seconds=self._leeway):
                del self._verified[token]
                raise Unauthenticated("Authentication required: the token has expired")
            self._verified.move_to_end(token)
            return known
        claims = self._decode(token)
        self._verified[token] = claims
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("Authentication required: the token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("Authentication required: the token is not valid") from exc
        subject = claims["sub"]
        if not isinstance(subject, str):
            raise Unauthenticated("Authentication required: the token's subject is not valid")
        return TokenClaims(user_id=subject, expires_at=_expiry(claims))

    async def authenticate(self, token: str | None) -> User:
        """The existing user a valid token names."""
        user, _ = await self.authenticate_claims(token)
        return user

    async def authenticate_claims(self, token: str | None) -> tuple[User, TokenClaims]:
        """The existing user a valid token names, and the token's claims (for its expiry)."""
        claims = self.verify(token)
        user = self.users.get(claims.user_id)
        if user is None:
            generation = self.users.generation
            user = await self.store.user_by_id(claims.user_id)
            if user is not None:
                self.users.put(user, generation)
        if user is None:
            raise Unauthenticated("Authentication required: the token's user does not exist")
        return user, claims
