"""Every presence key, built in one place, each with its hash tag (shard anchor).

Every key carries the hash tag ``{<PRESENCE_KEY_PREFIX>}`` so each script touches one Redis
Cluster slot. Layout (``P`` = the prefix):

==============================  =====  ==================================================
key                             type   content
==============================  =====  ==================================================
``{P}:conns``                   ZSET   cid -> expiry ms; the expiry index the sweep reads
``{P}:users``                   ZSET   uid -> latest expiry ms; "who is online"
``{P}:conn:<cid>``              HASH   uid, username, channel, exp, at (connected ms)
``{P}:conn:<cid>:rooms``        SET    rooms the connection joined
``{P}:user:<uid>``              HASH   username, status
``{P}:user:<uid>:conns``        ZSET   cid -> expiry ms
``{P}:room:<room>``             ZSET   uid -> latest expiry ms of their connections in it
``{P}:room:<room>:user:<uid>``  SET    the user's connections in the room
``{P}:stats``                   HASH   counters accumulated for the stats flush
``{P}:sweeping``                ZSET   cid -> claim deadline ms (claimed by a sweep)
``{P}:sweeping:exp``            HASH   cid -> expiry ms at claim time
``{P}:stats:claim:<id>``        HASH   counters renamed away by flush <id>, until applied
``{P}:stats:claims``            ZSET   flush id -> claim time ms (claims not yet released)
``{P}:<task>:lock``             STR    token of the run holding the task lock (sweep,
                                       flush, reap)
``{P}:<task>:period``           STR    claim of the task's current period (expires)
``{P}:<task>:last``             HASH   last run of the task (duration, counts), run totals
``{P}:flush:hbmark``            STR    expiry score below which last_heartbeat_at is known
``{P}:handlers:disabled``       SET    message types an operator disabled (from the DB)
``{P}:handlers:version``        STR    counter bumped on every change of that set
``{P}:events``                  STREAM the presence event log (presence/live/eventlog.py)
``{P}:addr:<ip>:conns``         ZSET   cid -> connect ms: connections from one address
``{P}:addr:<ip>:rate``          HASH   tokens, ts: the address's connect-rate bucket
``{P}:user:<uid>:block``        STR    an operator's block of the user (expires with it)
``{P}:user:<uid>:revoked``      STR    ms: credentials issued before it are refused
``{P}:login:<hash>:revoked``    STR    a revoked login session (expires with the revocation)
``{P}:token:<id>``              STR    a single-use token's mark once presented
``{P}:procs``                   ZSET   process id -> last refresh ms (presence/live/processes.py)
``{P}:proc:<id>``               HASH   one web process's record (host, pid, sockets, ...)
``{P}:proc:<id>:conns``         SET    connection ids the process holds a socket for
``{P}:proc:<id>:ask``           LIST   operators' introspection requests to the process
``{P}:proc:<id>:reply:<rid>``   STR    the process's answer to request <rid> (JSON, expires)
``{P}:reconcile:last``          HASH   last ghost reconciliation (ghosts, scanned, ...)
``{P}:active``                  ZSET   uid -> last activity (Unix s): connect, ``activity``
``{P}:held``                    ZSET   held leaves -> due ms: ``<uid>`` (the user's) or
                                       ``<uid>|<room>`` (a room's); PRESENCE_LEAVE_GRACE
``{P}:held:why``                HASH   held leave -> the close reason its leave will carry
==============================  =====  ==================================================

Scores, not key TTLs, decide who is online: a member counts while its score is in the
future. Keys also expire (at expiry + ``PRESENCE_KEY_GRACE``) so that nothing leaks even when
no sweep ever runs. Callers pass "now"; scripts never read the Redis clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from presence.conf import app_settings


class Keys:
    """Builds every presence key. Nothing else in the project spells a key."""

    def __init__(self, prefix: str | None = None) -> None:
        self.tag = "{" + (prefix or app_settings.KEY_PREFIX) + "}"

    @property
    def conns(self) -> str:
        return f"{self.tag}:conns"

    @property
    def users(self) -> str:
        return f"{self.tag}:users"

    @property
    def stats(self) -> str:
        return f"{self.tag}:stats"

    @property
    def sweeping(self) -> str:
        return f"{self.tag}:sweeping"

    @property
    def events(self) -> str:
        """The presence event log (a stream); see presence/live/eventlog.py and docs/presence.md."""
        return f"{self.tag}:events"

    @property
    def active(self) -> str:
        """When each user was last active (Unix seconds): set by a connect and by ``activity``
        frames (presence/live/batching.py), read by the bulk status and the watch list."""
        return f"{self.tag}:active"

    @property
    def held(self) -> str:
        """Leaves held for PRESENCE_LEAVE_GRACE: ``<uid>`` or ``<uid>|<room>`` -> due ms."""
        return f"{self.tag}:held"

    @property
    def held_why(self) -> str:
        """Held leave -> the close reason its leave is logged with."""
        return f"{self.tag}:held:why"

    @property
    def sweeping_exp(self) -> str:
        return f"{self.tag}:sweeping:exp"

    # ---- sweep and stats flush keys (presence/jobs/sweep.py, presence/jobs/flush.py)
    def task_lock(self, task: str) -> str:
        """Lock of a periodic task (``sweep`` or ``flush``): one run at a time."""
        return f"{self.tag}:{task}:lock"

    def task_period(self, task: str) -> str:
        """Claim of a periodic task's current period: one beat-scheduled run per period."""
        return f"{self.tag}:{task}:period"

    def task_last(self, task: str) -> str:
        """Metrics of a periodic task: its last run and totals over all runs."""
        return f"{self.tag}:{task}:last"

    @property
    def stats_claims(self) -> str:
        return f"{self.tag}:stats:claims"

    def stats_claim(self, flush_id: str) -> str:
        return f"{self.tag}:stats:claim:{flush_id}"

    @property
    def heartbeat_mark(self) -> str:
        return f"{self.tag}:flush:hbmark"

    @property
    def handlers_disabled(self) -> str:
        return f"{self.tag}:handlers:disabled"

    @property
    def handlers_version(self) -> str:
        return f"{self.tag}:handlers:version"

    def conn(self, cid: str) -> str:
        return f"{self.tag}:conn:{cid}"

    def conn_rooms(self, cid: str) -> str:
        return f"{self.tag}:conn:{cid}:rooms"

    def user(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}"

    def user_conns(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}:conns"

    def room(self, room: str) -> str:
        return f"{self.tag}:room:{room}"

    def room_user(self, room: str, uid: int | str) -> str:
        return f"{self.tag}:room:{room}:user:{uid}"

    # ---- the connect gate (connect.lua; presence/actions/revocation.py, docs/operations.md)
    def addr_conns(self, ip: str) -> str:
        return f"{self.tag}:addr:{ip or '-'}:conns"

    def addr_rate(self, ip: str) -> str:
        return f"{self.tag}:addr:{ip or '-'}:rate"

    def user_block(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}:block"

    def user_revoked(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}:revoked"

    def login_revoked(self, login: str) -> str:
        return f"{self.tag}:login:{login or '-'}:revoked"

    def token_used(self, token_id: str) -> str:
        return f"{self.tag}:token:{token_id or '-'}"

    @property
    def conn_prefix(self) -> str:
        """What every connection hash's key starts with (connect.lua prunes by it)."""
        return f"{self.tag}:conn:"

    def fixed(self) -> list[str]:
        """Keys every batch script (heartbeat, end) takes first, in KEYS order."""
        return [self.conns, self.users, self.stats, self.sweeping, self.sweeping_exp]

    def conn_group(self, cid: str, uid: int | str, rooms: Iterable[str]) -> list[str]:
        """The per-connection key group of heartbeat.lua and end.lua."""
        group = [self.conn(cid), self.conn_rooms(cid), self.user(uid), self.user_conns(uid)]
        for room in rooms:
            group += [self.room(room), self.room_user(room, uid)]
        return group

    # ---- process registry (presence/live/processes.py)
    @property
    def procs(self) -> str:
        """Index of registered web processes: id -> last refresh ms."""
        return f"{self.tag}:procs"

    def proc(self, proc_id: str) -> str:
        """One process's record (a hash that expires when the process stops refreshing)."""
        return f"{self.tag}:proc:{proc_id}"

    def proc_conns(self, proc_id: str) -> str:
        """The connection ids one process holds sockets for."""
        return f"{self.tag}:proc:{proc_id}:conns"

    # ---- process introspection (presence/live/inspector.py)
    def proc_ask(self, proc_id: str) -> str:
        """Introspection requests waiting for one process (it pops them; the list expires)."""
        return f"{self.tag}:proc:{proc_id}:ask"

    def proc_reply(self, proc_id: str, request_id: str) -> str:
        """One process's answer to one introspection request (bounded JSON, expires)."""
        return f"{self.tag}:proc:{proc_id}:reply:{request_id}"

    # ---- server-side hooks (presence/hooks/)
    @property
    def hook_holds(self) -> str:
        """Users whose signal receivers failed: uid -> "due ms:attempts:first failure ms"."""
        return f"{self.tag}:hooks:holds"

    @property
    def webhook_backlog(self) -> str:
        """Undelivered webhook events per endpoint (as of the last routing run): name -> n."""
        return f"{self.tag}:webhooks:backlog"


def keys() -> Keys:
    """Keys for the configured prefix (read live so tests may override it)."""
    return Keys()
