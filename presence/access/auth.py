"""WebSocket authentication: Django session cookie, or a short-lived signed token.

Tokens are minted by ``POST /api/presence/token/`` for the logged-in user, carry a salt that
makes them good for nothing but this endpoint, expire after ``PRESENCE_TOKEN_MAX_AGE`` seconds,
die with a password change (they embed the session auth hash), open one connection at most
(connect.lua marks each token used), and are refused once the user was kicked after they were
minted or their login session was logged out. A token is sent in the ``Sec-WebSocket-Protocol``
header as ``presence.token.<token>`` (kept out of URLs and access logs) or as ``?token=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, InstanceSessionWrapper
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core import signing
from django.utils.crypto import constant_time_compare, get_random_string, salted_hmac

from presence.access.handshakes import Batcher, get_batcher
from presence.conf import app_settings
from presence.loops import LoopLocal

TOKEN_SALT = "presence.ws-token"  # noqa: S105 - a signing salt, not a secret
TOKEN_SUBPROTOCOL = "presence.token."  # noqa: S105 - a protocol name
# '.' instead of signing's ':' so that a token is a valid Sec-WebSocket-Protocol value
# (RFC 6455 subprotocols are HTTP tokens: no ':').
TOKEN_SEP = "."  # noqa: S105 - a separator


def login_hash(session_key: str | None) -> str:
    """A stable, non-reversible name for a login session (kept in Redis, never the key)."""
    if not session_key:
        return ""
    return salted_hmac("presence.login", session_key, algorithm="sha256").hexdigest()[:32]


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=TOKEN_SALT, sep=TOKEN_SEP)


def mint_token(user: AbstractBaseUser, *, session_key: str | None = None) -> str:
    """A signed token identifying ``user`` (and the login session it came from)."""
    payload = {
        "u": user.pk,
        "h": user.get_session_auth_hash(),
        "s": login_hash(session_key),
        # Two tokens minted in the same second must differ: each is used once.
        "n": get_random_string(8),
    }
    return _signer().sign_object(payload)


@dataclass(frozen=True)
class TokenAuth:
    """What a valid token proves, for the connect gate (presence.store.ConnectGate)."""

    user: AbstractBaseUser
    issued_ms: int
    token_id: str  # its signature: unique per token, marks it used
    login: str  # login_hash of the session that minted it


@dataclass(frozen=True)
class _Claim:
    """What a token's signature vouches for, before the user is looked up."""

    uid: int | str
    auth_hash: str
    issued_ms: int
    token_id: str
    login: str


def _read_token(token: str) -> _Claim | None:
    """The claim of a well-signed, unexpired token, else None (no database)."""
    signer = _signer()
    try:
        payload = signer.unsign_object(token, max_age=app_settings.TOKEN_MAX_AGE)
        # The timestamp again (unsign_object drops it): when the token was minted. Signer's
        # own unsign (not TimestampSigner's) returns "value<sep>timestamp".
        stamped = signing.Signer.unsign(signer, token)
        issued = signing.b62_decode(stamped.rsplit(TOKEN_SEP, 1)[1])
    except (signing.BadSignature, ValueError, IndexError):  # includes SignatureExpired
        return None
    if not isinstance(payload, dict):
        return None
    uid = payload.get("u")
    if not isinstance(uid, (int, str)):
        return None
    return _Claim(
        uid=uid,
        auth_hash=str(payload.get("h", "")),
        issued_ms=issued * 1000,
        token_id=token.rsplit(TOKEN_SEP, 1)[1],
        login=str(payload.get("s", "")),
    )


def users_from_tokens(tokens: list[str]) -> list[TokenAuth | None]:
    """What each valid, unexpired token proves (else None; inactive users are returned), in
    order; sync (ORM).

    WARNING: on the connect path of every token client: one user query for the whole batch
    (presence/access/handshakes.py batches the handshakes of the moment).
    """
    claims = [_read_token(token) for token in tokens]
    pks = [_user_pk(claim) for claim in claims]
    wanted = {pk for pk in pks if pk is not None}
    model = get_user_model()
    users = {u.pk: u for u in model._default_manager.filter(pk__in=wanted)} if wanted else {}
    out: list[TokenAuth | None] = []
    for claim, pk in zip(claims, pks, strict=True):
        user = users.get(pk) if claim is not None and pk is not None else None
        # The token dies with a password change: it embeds the session auth hash. Inactive
        # users are returned: the consumer refuses them with its own close code.
        if (
            claim is None
            or user is None
            or not constant_time_compare(claim.auth_hash, user.get_session_auth_hash())
        ):
            out.append(None)
            continue
        out.append(
            TokenAuth(
                user=user, issued_ms=claim.issued_ms, token_id=claim.token_id, login=claim.login
            )
        )
    return out


def _user_pk(claim: _Claim | None) -> Any:
    """The user id a claim names, None when it names none (or a malformed one)."""
    if claim is None:
        return None
    try:
        return get_user_model()._meta.pk.to_python(claim.uid)
    except Exception:  # ValidationError: no such user, as filter(pk=...) would find none
        return None


# Each event loop's token handshakes, resolved a batch at a time.
_token_batchers: LoopLocal[Batcher[str, TokenAuth | None]] = LoopLocal(
    lambda loop: Batcher(users_from_tokens)
)
token_batcher = _token_batchers.get


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from a token when the session cookie gave no user.

    The token comes from the ``presence.token.<token>`` subprotocol or ``?token=``; what it
    proves (:class:`TokenAuth`) goes to ``scope["presence_token"]`` for the connect gate.
    Concurrent token handshakes share one user query (:func:`users_from_tokens`).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # This frame lives as long as the socket: keep nothing in it but what is passed on.
        token = _subprotocol_token(scope) or _query_token(scope)
        if token and not scope["user"].is_authenticated:
            # Batched on the thread-sensitive thread like every ORM call here: Channels
            # closes connections around calls there; on other executor threads (asgiref
            # 3.13) the connection a call opens is not the one it closes, and they pile up.
            found = await token_batcher().one(token)
            scope = {
                **scope,
                "user": found.user if found else AnonymousUser(),
                "presence_token": found,
            }
            del found
        return await self.inner(scope, receive, send)


class SessionAuthMiddleware(AuthMiddleware):
    """Channels' ``AuthMiddleware``, minus its database hop for handshakes without a cookie.

    Without a session cookie the session can name no user, yet Channels still resolves it
    in the thread-sensitive executor: one queued thread hop per connect (token clients, a
    connect storm). Here such a handshake is anonymous at once; with the cookie, the session
    and user are resolved by Django's rules in a batch with the other handshakes of the
    moment: one session query and one user query per batch, not per handshake.
    """

    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        if settings.SESSION_COOKIE_NAME not in scope.get("cookies", {}):
            scope["user"]._wrapped = AnonymousUser()
            return
        # Batched with the other handshakes of the moment (presence/access/handshakes.py).
        scope["user"]._wrapped = await get_batcher().user_for(scope["session"])


def _subprotocol_token(scope: dict[str, Any]) -> str:
    """The token offered as the ``presence.token.<token>`` subprotocol ("" when absent)."""
    for offered in scope.get("subprotocols") or ():
        if offered.startswith(TOKEN_SUBPROTOCOL):
            return str(offered[len(TOKEN_SUBPROTOCOL) :])
    return ""


def _query_token(scope: dict[str, Any]) -> str:
    """``?token=`` of the handshake URL ("" when absent)."""
    raw = scope.get("query_string", b"")
    if b"token=" not in raw:
        return ""
    return (parse_qs(raw.decode("latin-1")).get("token") or [""])[0]


class WebSocketSessionMiddleware:
    """Channels' ``SessionMiddleware`` without its wrapper around every frame sent.

    Channels wraps the ASGI ``send`` of each connection to save the session (and set its
    cookie) on the message types that can carry a cookie: ``http.response.start`` only
    (``InstanceSessionWrapper.save_message_types``), which a WebSocket never sends. Yet
    the wrapper reads the lazy session's ``modified`` and ``is_empty()`` on every frame.

    WARNING: per frame of every cookie socket: with global events on, a connect storm sends
    every socket a diff per window, and the wrapper was ~5 % of the server's CPU (py-spy,
    docs/performance.md). Here a WebSocket's frames go to the server's ``send`` directly;
    the session is resolved exactly as Channels does; other scopes keep the wrapper.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        if scope.get("type") == "websocket" and not websocket_sends_save_session():
            return await self.inner(wrapper.scope, receive, send)
        return await self.inner(wrapper.scope, receive, wrapper.send)


def websocket_sends_save_session() -> bool:
    """Whether Channels' wrapper would save the session on a WebSocket message type (it
    does not in Channels 4; a version that did keeps the wrapper here)."""
    return any(
        kind.startswith("websocket.")
        for kind in (
            *InstanceSessionWrapper.save_message_types,
            *InstanceSessionWrapper.cookie_response_message_types,
        )
    )


def PresenceAuthStack(inner: Any) -> Any:  # noqa: N802 - mirrors AuthMiddlewareStack
    """Session-cookie auth, then token auth, around ``inner`` (Channels' stack otherwise)."""
    return CookieMiddleware(
        WebSocketSessionMiddleware(SessionAuthMiddleware(TokenAuthMiddleware(inner)))
    )
