"""The project's Redis URL forms, parsed once and translated for each client library.

Every Redis URL setting (``REDIS_URL``, ``CELERY_BROKER_URL``) accepts, besides redis-py's
``redis://``, ``rediss://`` and ``unix://``, one Sentinel form::

    redis+sentinel://[[username]:password@]host1:26379,host2:26379,host3:26379/<master>/<db>

(``rediss+sentinel://`` for TLS; a sentinel without a port listens on 26379; the password is
the data nodes'; ``?sentinel_password=...`` (and ``sentinel_username``) when the sentinels
want their own). Each library wants Sentinel spelled its own way: redis-py
``Sentinel(...).master_for(...)`` (presence/store/clients.py), channels-redis a host dict
(``channel_layer_host``), kombu ``sentinel://h1/<db>;sentinel://h2/<db>`` plus a ``master_name``
transport option (``celery_broker``). This module is pure: it imports no Django and no redis
at import time, so config/settings.py and presence.store can both use it, and it explains a
malformed URL in words (``RedisUrlError``; ``manage.py check`` shows it, presence/checks.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SCHEMES = PLAIN_SCHEMES + SENTINEL_SCHEMES
SENTINEL_DEFAULT_PORT = 26379
SENTINEL_QUERY_OPTIONS = ("sentinel_password", "sentinel_username")

Address = tuple[str, int]


class RedisUrlError(ValueError):
    """A Redis URL the project cannot use; the message says what is wrong with it."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL points at.

    ``kind`` is ``redis`` (one server over TCP), ``unix`` (a socket path) or ``sentinel``
    (the primary named ``master_name``, found through ``sentinels``). ``url`` is the URL as
    given (plain URLs are handed to ``from_url`` unchanged, with all their query options).
    """

    kind: str
    url: str = field(repr=False)  # may hold a password
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinels: tuple[Address, ...] = ()
    master_name: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def is_sentinel(self) -> bool:
        return self.kind == "sentinel"

    def sentinel_kwargs(self, **options: Any) -> dict[str, Any]:
        """Connection options of the sentinels themselves (``options``: timeouts)."""
        kwargs: dict[str, Any] = dict(options)
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def master_kwargs(self) -> dict[str, Any]:
        """Connection options of the data nodes: db, credentials, TLS."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.username is not None:
            kwargs["username"] = self.username
        if self.tls:
            kwargs["ssl"] = True
        return kwargs


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query_start = tail.find("?")
    if query_start >= 0 and "password=" in tail[query_start:]:
        tail = tail[:query_start] + "?***"
    return f"{scheme}://{userinfo}{at}{hosts}{slash}{tail}"


# A Redis URL inside free text: one of SCHEMES, then everything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(
    r"\b(?:" + "|".join(re.escape(s) for s in sorted(SCHEMES, key=len, reverse=True)) + r")"
    r"://[^\s'\"<>]+"
)
# redis-py's reprs of clients, pools and connections list their keyword arguments, the
# password among them (``Connection(...,password=s3cret,host=...)``); a MasterNotFoundError's
# message carries such a repr of the sentinel client. Also the dict spellings.
_PASSWORD_IN_TEXT = re.compile(r"(?i)(\b(?:sentinel_)?password(?:=|': '|\": \"))([^,)\s'\"]+)")


def redact(text: str) -> str:
    """``text`` with the password of every Redis URL in it, and every ``password=`` keyword
    of a redis-py client's repr, replaced by ``***``: for log lines, exceptions and pages that
    may print a Redis URL or a client (``redacted`` masks one URL)."""
    text = _URL_IN_TEXT.sub(_redacted_in_text, text)
    return _PASSWORD_IN_TEXT.sub(r"\1***", text)


def _redacted_in_text(match: re.Match[str]) -> str:
    # Punctuation that ends a sentence or a repr is not part of the URL.
    url = match.group(0)
    kept = url.rstrip(",.;:)]}")
    return redacted(kept) + url[len(kept) :]


def parse_redis_url(url: str) -> RedisTarget:
    """Parse one of the project's Redis URL forms; ``RedisUrlError`` explains a bad one."""
    if not url or not url.strip():
        raise RedisUrlError("the URL is empty")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise RedisUrlError(
            f"{redacted(url)!r} has no scheme; expected one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme in SENTINEL_SCHEMES:
        return _parse_sentinel(url, tls=scheme == "rediss+sentinel")
    if scheme in PLAIN_SCHEMES:
        return _parse_plain(url, scheme)
    hint = " (kombu's spelling; write redis+sentinel://h1,h2,h3/<master>/<db>)"
    raise RedisUrlError(
        f"unknown scheme {scheme + '://'!r} in {redacted(url)!r}; expected one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
        + (hint if scheme == "sentinel" else "")
    )


def _db(value: str, url: str) -> int:
    if not value.isdigit():
        raise RedisUrlError(f"the database {value!r} in {redacted(url)!r} is not an integer >= 0")
    return int(value)


def _port(value: str, host: str, url: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise RedisUrlError(
            f"bad port {value!r} for host {host!r} in {redacted(url)!r} (1-65535 expected)"
        )
    return int(value)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _parse_plain(url: str, scheme: str) -> RedisTarget:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db = 0
    if scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"{redacted(url)!r} names no socket path (unix:///path/to.sock)")
    else:
        if not parts.hostname:
            raise RedisUrlError(f"{redacted(url)!r} names no host")
        try:
            parts.port  # noqa: B018 - urllib validates the port when it is read
        except ValueError:
            port = parts.netloc.rpartition(":")[2]
            _port(port, parts.hostname, url)
        path = parts.path.strip("/")
        if path:
            db = _db(path, url)
    if "db" in query:
        db = _db(query["db"][0], url)
    user, password = _credentials(parts.netloc.rpartition("@")[0])
    if "password" in query:
        password = query["password"][0]
    return RedisTarget(
        kind="unix" if scheme == "unix" else "redis",
        url=url,
        db=db,
        tls=scheme == "rediss",
        username=user,
        password=password,
    )


def _host_port(entry: str, url: str) -> Address:
    entry = entry.strip()
    if not entry:
        raise RedisUrlError(f"an empty sentinel host in {redacted(url)!r} (a stray comma?)")
    if entry.startswith("["):  # [IPv6]:port
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or not host:
            raise RedisUrlError(f"bad IPv6 sentinel host {entry!r} in {redacted(url)!r}")
        if not rest:
            return host, SENTINEL_DEFAULT_PORT
        if not rest.startswith(":"):
            raise RedisUrlError(f"bad sentinel host {entry!r} in {redacted(url)!r}")
        return host, _port(rest[1:], host, url)
    host, colon, port = entry.partition(":")
    if not host:
        raise RedisUrlError(f"sentinel host {entry!r} in {redacted(url)!r} has no name")
    return host, _port(port, host, url) if colon else SENTINEL_DEFAULT_PORT


def _parse_sentinel(url: str, *, tls: bool) -> RedisTarget:
    rest = url.partition("://")[2]
    rest, _, query_string = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts_part = authority.rpartition("@")
    if not hosts_part.strip():
        raise RedisUrlError(
            f"{redacted(url)!r} names no sentinel hosts "
            "(redis+sentinel://host1:26379,host2:26379,host3:26379/<master>/<db>)"
        )
    sentinels = tuple(_host_port(entry, url) for entry in hosts_part.split(","))
    segments = [s for s in path.split("/") if s] if path else []
    if not segments:
        raise RedisUrlError(
            f"{redacted(url)!r} names no master: the path must be /<master name>/<db>, "
            "the name the sentinels monitor (sentinel monitor <name> ...)"
        )
    if len(segments) > 2:
        raise RedisUrlError(
            f"{redacted(url)!r} has a path of {len(segments)} parts; expected /<master name>/<db>"
        )
    master_name = unquote(segments[0])
    db = _db(segments[1], url) if len(segments) == 2 else 0
    query = parse_qs(query_string, keep_blank_values=True)
    unknown = sorted(set(query) - set(SENTINEL_QUERY_OPTIONS))
    if unknown:
        raise RedisUrlError(
            f"unknown option(s) {', '.join(unknown)} in {redacted(url)!r}; "
            f"known: {', '.join(SENTINEL_QUERY_OPTIONS)}"
        )
    user, password = _credentials(userinfo)
    return RedisTarget(
        kind="sentinel",
        url=url,
        db=db,
        tls=tls,
        username=user,
        password=password,
        sentinels=sentinels,
        master_name=master_name,
        sentinel_username=query["sentinel_username"][0] if "sentinel_username" in query else None,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )


# --------------------------------------------------------------------------- translations


def channel_layer_host(url: str, **options: Any) -> dict[str, Any]:
    """One channels-redis ``hosts`` entry for ``url`` (``options``: connection options).

    A plain URL stays ``{"address": url}``; the Sentinel form becomes channels-redis' Sentinel
    host (``master_name``, ``sentinels``, ``sentinel_kwargs``) whose pool asks the sentinels
    for the primary on every new connection. A malformed URL is kept as given, for
    ``manage.py check`` to explain (settings must load for the check to run).
    """
    try:
        target = parse_redis_url(url)
    except RedisUrlError:
        return {"address": url, **options}
    if not target.is_sentinel:
        return {"address": url, **options}
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_") and v is not None}
    return {
        "master_name": target.master_name,
        "sentinels": [list(address) for address in target.sentinels],
        "sentinel_kwargs": target.sentinel_kwargs(**timeouts),
        **target.master_kwargs(),
        **options,
    }


def is_redis_url(url: str) -> bool:
    """True when ``url`` uses one of this module's schemes (else: another broker's URL)."""
    return url.partition("://")[0].lower() in SCHEMES


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The kombu broker URL and extra transport options for ``url``.

    The Sentinel form becomes ``sentinel://[user:pw@]h1:p1/<db>;sentinel://h2:p2/<db>`` with
    ``master_name`` (and the sentinels' own credentials) as transport options. Any other URL
    (plain Redis, ``amqp://`` for RabbitMQ, a malformed one for the check to explain) is
    returned as given, with no extra options.
    """
    if not is_redis_url(url):
        return url, {}
    try:
        target = parse_redis_url(url)
    except RedisUrlError:
        return url, {}
    if not target.is_sentinel:
        return url, {}
    userinfo = ""
    if target.username is not None or target.password is not None:
        userinfo = quote(target.username or "", safe="")
        if target.password is not None:
            userinfo += ":" + quote(target.password, safe="")
        userinfo += "@"
    # Each URL carries the db: kombu takes the connection's parameters from the first one.
    hosts = [
        f"sentinel://{userinfo}{f'[{h}]' if ':' in h else h}:{p}/{target.db}"
        for h, p in target.sentinels
    ]
    options: dict[str, Any] = {"master_name": target.master_name}
    sentinel_kwargs = target.sentinel_kwargs()
    sentinel_kwargs.pop("ssl", None)  # kombu passes broker_use_ssl to the sentinels itself
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return ";".join(hosts), options
