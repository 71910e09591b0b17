"""Every Redis key the project writes, built in one place, each with its hash tag (shard anchor).

Two families (``P`` = PRESENCE_KEY_PREFIX, ``S`` = a logical shard's tag content
``P:<n>:<salt>``, presence/store/shards.py):

* :class:`Keys` (``Keys(shard)``): presence state, tagged ``{S}``. They live on the presence
  store (one Redis, a Cluster or shard URLs: presence/store/topology.py). Each key is
  *anchored*: it lives on the shard of its user (``user_shard(uid)``), of its room
  (``room_shard(room)``), of its address (``ip_shard(ip)``), or it is one shard's own
  (one per shard: the shard's indexes, its event-log stream, its jobs' locks).
* :class:`ControlKeys` (``control_keys()``): control state that is not presence, tagged
  ``{P}``, kept on REDIS_URL next to the channel layer and Celery.

Every script touches keys of one tag only, so one Cluster slot (tests/presence/store/
test_keys_anchors.py checks each key below against its anchor's slot).

=================================  ======  =======  ==========================================
key                                type    anchor   content
=================================  ======  =======  ==========================================
``{S}:conns``                      ZSET    shard    cid -> expiry ms of the shard's users' conns
``{S}:users``                      ZSET    shard    uid -> latest expiry ms ("who is online")
``{S}:stats``                      HASH    shard    counters accumulated for the stats flush
``{S}:sweeping``                   ZSET    shard    cid -> claim deadline ms (claimed by a sweep)
``{S}:sweeping:exp``               HASH    shard    cid -> expiry ms at claim time
``{S}:stats:claim:<id>``           HASH    shard    counters renamed away by flush <id>
``{S}:stats:claims``               ZSET    shard    flush id -> claim time ms (not yet released)
``{S}:<task>:lock``                STR     shard    token of the shard's run of <task>
``{S}:<task>:period``              STR     shard    claim of the task's current period (expires)
``{S}:<task>:last``                HASH    shard    last run of the task on the shard, totals
``{S}:flush:hbmark``               STR     shard    expiry score below which last_heartbeat_at
                                                    is known
``{S}:events``                     STREAM  shard    the shard's event log (lib/eventlog.lua)
``{S}:active``                     ZSET    shard    uid -> last activity (Unix s)
``{S}:held``                       ZSET    shard    held leaves -> due ms: ``<uid>`` (user's
                                                    shard) or ``<uid>|<room>`` (room's shard)
``{S}:held:why``                   HASH    shard    held leave -> the close reason (a room's
                                                    hold also ``<uid>|<room>\\nname`` -> name)
``{S}:rooms``                      ZSET    shard    room -> lower bound of its members' expiry ms
                                                    (repair_rooms.lua's index; on the room's shard)
``{S}:conn:<cid>``                 HASH    user     uid, username, channel, exp, at, ip, login
``{S}:conn:<cid>:rooms``           SET     user     rooms the connection joined (authoritative)
``{S}:user:<uid>``                 HASH    user     username, status
``{S}:user:<uid>:conns``           ZSET    user     cid -> expiry ms
``{S}:user:<uid>:block``           STR     user     an operator's block of the user (expires)
``{S}:user:<uid>:revoked``         STR     user     ms: credentials issued before are refused
``{S}:login:<hash>:revoked``       STR     user     a revoked login session of the user (and a
                                                    copy on the login's own shard)
``{S}:token:<id>``                 STR     user     a single-use token's mark (token's user)
``{S}:room:<room>``                ZSET    room     uid -> latest expiry ms of their conns in it
``{S}:room:<room>:user:<uid>``     SET     room     the user's connections in the room
``{S}:addr:<ip>:conns``            ZSET    address  ``<uid>|<cid>`` -> connect ms: conns from
                                                    one address (connect_gate.lua)
``{S}:addr:<ip>:rate``             HASH    address  tokens, ts: the connect-rate bucket
``{P}:handlers:disabled``          SET     control  message types an operator disabled
``{P}:handlers:version``           STR     control  counter bumped on every change of that set
``{P}:procs``                      ZSET    control  process id -> last refresh ms
``{P}:proc:<id>``                  HASH    control  one web process's record
``{P}:proc:<id>:conns``            SET     control  connection ids the process holds
``{P}:proc:<id>:ask``              LIST    control  operators' introspection requests
``{P}:proc:<id>:reply:<rid>``      STR     control  the process's answer to request <rid>
``{P}:<task>:lock|period|last``    ...     control  the same, for global tasks (reconcile)
``{P}:hooks:holds``                HASH    control  users whose signal receivers failed
``{P}:webhooks:backlog``           HASH    control  undelivered webhook events per endpoint
=================================  ======  =======  ==========================================

Token marks and login revocations are anchored on their user's shard (not on control, as
first planned): connect.lua checks them in the same call that registers the connection, so a
connect stays one EVALSHA on one slot, and every caller that revokes knows the user.

Scores, not key TTLs, decide who is online: a member counts while its score is in the
future. Keys also expire (at expiry + ``PRESENCE_KEY_GRACE``) so that nothing leaks even when
no sweep ever runs. Callers pass "now"; scripts never read the Redis clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from presence.conf import app_settings
from presence.store.shards import shard_tag

# What joins a room's key and a uid into the room-user set's key: repair_rooms.lua builds
# the set's key of each lapsed member it finds from it (it cannot know the members up front).
ROOM_USER_SUFFIX = ":user:"


class Keys:
    """Builds every presence-state key of one logical shard (its tag). Nothing else in the
    project spells a key: callers pick the shard (user_shard, room_shard, ip_shard)."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.tag = shard_tag(shard)

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
        return f"{self.room(room)}{ROOM_USER_SUFFIX}{uid}"

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
        """A connection's keys, then a (room, room-user) pair per room: heartbeat.lua and
        end.lua take the first four (their rooms' keys live on the rooms' shards)."""
        group = [self.conn(cid), self.conn_rooms(cid), self.user(uid), self.user_conns(uid)]
        for room in rooms:
            group += [self.room(room), self.room_user(room, uid)]
        return group

    @property
    def rooms(self) -> str:
        """The shard's rooms: room -> a lower bound of its members' expiry ms (joins lower it;
        repair_rooms.lua resets it to the oldest member's score, or drops an empty room)."""
        return f"{self.tag}:rooms"


class ControlKeys:
    """Control keys (not presence state): tagged ``{P}``, kept on REDIS_URL."""

    def __init__(self, prefix: str | None = None) -> None:
        self.tag = "{" + (prefix or app_settings.KEY_PREFIX) + "}"

    @property
    def handlers_disabled(self) -> str:
        return f"{self.tag}:handlers:disabled"

    @property
    def handlers_version(self) -> str:
        return f"{self.tag}:handlers:version"

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

    # ---- global (not per-shard) periodic tasks: reconcile, the hooks' routing
    def task_lock(self, task: str) -> str:
        """Lock of a global periodic task: one run at a time."""
        return f"{self.tag}:{task}:lock"

    def task_period(self, task: str) -> str:
        """Claim of a global task's current period."""
        return f"{self.tag}:{task}:period"

    def task_last(self, task: str) -> str:
        """Metrics of a global task: its last run and totals."""
        return f"{self.tag}:{task}:last"


def keys(shard: int = 0) -> Keys:
    """Keys of ``shard`` (its tag follows the live prefix and shard count; the objects are
    shared, never changed)."""
    return _keys(shard, shard_tag(shard))


@lru_cache(maxsize=4096)
def _keys(shard: int, tag: str) -> Keys:
    # Keyed by the tag too: a changed prefix or shard count gives a new tag, so a new object.
    return Keys(shard)


def control_keys() -> ControlKeys:
    """The control keys (read live so tests may override the prefix)."""
    return ControlKeys()
