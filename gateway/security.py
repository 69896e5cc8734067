"""Passwords, tokens, client addresses and account numbers.

Identity comes only from a verified JWT; no header a client can set (X-User-Id,
X-Forwarded-For from an untrusted peer, ...) changes who a request is or where it
comes from.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.problems import Problem
from paystream.settings import Settings

ROLES = frozenset({"user", "admin"})
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{2,63}$")

_hasher = PasswordHasher()  # argon2id with RFC 9106 low-memory parameters


# ----------------------------------------------------------------------- passwords


def normalise_email(email: str) -> str:
    return email.strip().lower()


def valid_email(email: str) -> bool:
    return bool(_EMAIL.match(email)) and len(email) <= 254


def password_problem(password: str) -> str | None:
    """Why a password is too weak, or None. Length matters most; one character class
    throughout ("aaaaaaaaaaaa", "123456789012") is refused as trivially guessable."""
    if len(password) < 12:
        return "password must have at least 12 characters"
    if len(password) > 256:
        return "password must have at most 256 characters"
    classes = (
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    )
    if sum(classes) < 2:
        return "password must mix at least two of: lower case, upper case, digits, symbols"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash to verify against when the email is unknown, so a login for a missing
    user costs the same time as one with a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(24))


# -------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def issue_token(settings: Settings, user_id: str, role: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    claims = {
        "sub": user_id, "role": role, "iss": settings.jwt_issuer, "iat": int(now),
        "exp": int(now) + settings.jwt_ttl_seconds, "jti": str(uuid.uuid4()),
    }  # fmt: skip
    return jwt.encode(claims, settings.jwt_key(), algorithm="HS256")


def _unauthorized(code: str, detail: str) -> Problem:
    return Problem(401, code, detail, headers={"WWW-Authenticate": 'Bearer realm="paystream"'})


def _verify(key: str, issuer: str, token: str) -> tuple[Principal, int]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=["HS256"], issuer=issuer,
            options={"require": ["sub", "role", "exp", "iat", "jti", "iss"]},
        )  # fmt: skip
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token_expired", "the access token has expired") from None
    except jwt.PyJWTError:
        raise _unauthorized("invalid_token", "the access token is not valid") from None
    role, sub = claims.get("role"), claims.get("sub")
    if role not in ROLES or not isinstance(sub, str):
        raise _unauthorized("invalid_token", "the access token is not valid")
    try:
        uuid.UUID(sub)
    except ValueError:
        raise _unauthorized("invalid_token", "the access token is not valid") from None
    return Principal(sub, str(role)), int(claims["exp"])


def verify_token(key: str, issuer: str, token: str) -> Principal:
    """Only HS256 with our key is accepted: `alg: none`, other algorithms, a bad
    signature, a missing claim, an expired token or an unknown role are all 401."""
    return _verify(key, issuer, token)[0]


class TokenVerifier:
    """`verify_token` with memory: a token string that verified once gives the same
    answer until its `exp`, so a client's many requests with one token pay for the
    signature check once. Expiry is still checked on every use."""

    def __init__(self, key: str, issuer: str, size: int = 50_000) -> None:
        self.key = key
        self.issuer = issuer
        self.size = size
        self._seen: dict[str, tuple[Principal, int]] = {}

    def verify(self, token: str) -> Principal:
        hit = self._seen.get(token)
        if hit is not None:
            if hit[1] > time.time():
                return hit[0]
            del self._seen[token]
        principal, exp = _verify(self.key, self.issuer, token)
        if len(self._seen) >= self.size:
            self._seen.pop(next(iter(self._seen)))
        self._seen[token] = (principal, exp)
        return principal


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise _unauthorized("unauthorized", "an Authorization: Bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("unauthorized", "an Authorization: Bearer token is required")
    return token.strip()


# ------------------------------------------------------------------ client address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip())


def _trusted(addr: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The socket peer, unless the peer is a trusted proxy: then the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (entries further left
    were written by the client and prove nothing)."""
    peer = peer or "unknown"
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] if hops else peer


def rate_subject(addr: str) -> str:
    """The per-IP rate limit's bucket for a client address.

    An IPv6 client normally holds a whole /64 (SLAAC, privacy addresses), so a
    per-address bucket would give it 2^64 fresh buckets; IPv6 is bucketed by /64.
    An IPv4-mapped IPv6 address is its IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


# ----------------------------------------------------------------- account numbers

ACCOUNT_NUMBER = re.compile(r"^PS[0-9]{10}$")


def _luhn_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def new_account_number() -> str:
    """ "PS" + 9 random digits + a Luhn check digit: a typo in a number someone reads
    out is caught before it names somebody else's account."""
    body = f"{secrets.randbelow(10**9):09d}"
    return f"PS{body}{_luhn_digit(body)}"


def valid_account_number(text: str) -> bool:
    if not ACCOUNT_NUMBER.match(text):
        return False
    return _luhn_digit(text[2:11]) == int(text[11])
