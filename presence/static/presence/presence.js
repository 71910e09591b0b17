/**
 * presence.js: a browser client for the presence WebSocket protocol v2 (docs/protocol.md).
 *
 * One ES module, no dependencies, no build step: import it from `/static/presence/presence.js`
 * or from a bundler (`@presence/client`). Types are in presence.d.ts beside it; the guide is
 * docs/client.md.
 *
 *   import { connect } from "/static/presence/presence.js";
 *   const client = connect();                      // session cookie; protocol presence.v2
 *   const lobby = await client.join("lobby");      // a live Map: user id -> member
 *   client.on("join", ({ room, user }) => console.log(user.username, "joined", room));
 *
 * The connection is an explicit state machine (idle → connecting → open → waiting → …):
 * reconnects wait a full-jitter exponential backoff (capped), and the close code decides
 * whether to come back at all. Member lists are kept by the pure functions `applySnapshot`
 * and `applyDiff` below, which the socket layer only feeds with frames.
 */

/** The WebSocket subprotocol this client speaks. */
export const SUBPROTOCOL = "presence.v2";
/** Prefix of the subprotocol that carries a token (`presence.token.<token>`). */
export const TOKEN_SUBPROTOCOL_PREFIX = "presence.token.";

/** Close codes of docs/protocol.md. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  TRY_AGAIN: 1013,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  EXPIRED: 4408,
  TERMINATED: 4410,
  TOO_MANY: 4429,
});

/** Connection states. `closed` is final until `connect()` is called again. */
export const State = Object.freeze({
  IDLE: "idle", // never connected
  CONNECTING: "connecting", // fetching a token, handshaking, waiting for hello
  OPEN: "open", // hello received: requests may be sent
  WAITING: "waiting", // closed; a reconnect is scheduled
  SUSPENDED: "suspended", // closed because the page was hidden away (pagehide, freeze)
  CLOSED: "closed", // stopped: disconnect(), or a close code that forbids reconnecting
});

export const STATUSES = Object.freeze(["online", "away", "busy"]);
const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const SUBPROTOCOL_SAFE = /^[A-Za-z0-9_.-]+$/;

/** An `error` frame answering a request, or a local failure (`timeout`, `disconnected`, …). */
export class PresenceError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "PresenceError";
    this.code = code;
  }
}

// ------------------------------------------------------------------ pure functions

/**
 * Backoff with "full jitter": a random delay in [0, min(cap, base · 2^attempt)).
 * Clients of a restarted server spread over the whole window instead of coming back together.
 *
 * @param {{base?: number, cap?: number, random?: () => number}} [options]
 * @returns {(attempt: number) => number} delay in milliseconds for the attempt (0-based)
 */
export function fullJitter({ base = 1000, cap = 30000, random = Math.random } = {}) {
  return (attempt) => random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/**
 * What a close code asks of the client (docs/protocol.md, "Close codes").
 *
 * @param {number} code
 * @returns {"unauthorized" | "stop" | "slow" | "reconnect"}
 */
export function closeDecision(code) {
  switch (code) {
    case CloseCode.UNAUTHORIZED:
      return "unauthorized"; // log in again / fetch a new token: not ours to retry
    case CloseCode.FORBIDDEN:
    case CloseCode.TERMINATED:
      return "stop"; // an inactive account, or an operator ended the session
    case CloseCode.TOO_MANY:
      return "slow"; // flooding or too many connections: come back much later
    default:
      return "reconnect"; // 4408, 1012, 1013, 1006 and anything unexpected
  }
}

/**
 * Compare two log positions ("<ms>-<n>") as integer pairs; null is before everything.
 *
 * @param {string | null | undefined} a
 * @param {string | null | undefined} b
 * @returns {number} negative, 0 or positive
 */
export function comparePos(a, b) {
  if (a == null || b == null) return a == null ? (b == null ? 0 : -1) : 1;
  const [am, an] = String(a).split("-").map(Number);
  const [bm, bn] = String(b).split("-").map(Number);
  return am !== bm ? am - bm : (an || 0) - (bn || 0);
}

/**
 * What to do with a diff, given the scope's position (docs/protocol.md, "Diffs").
 *
 * @param {string | null} position the scope's position, null while it has no snapshot
 * @param {{seq: string, prev?: string | null}} diff
 * @returns {"apply" | "ignore" | "gap"}
 */
export function diffAction(position, diff) {
  if (position == null) return "ignore"; // no snapshot yet (or one is on its way)
  if (comparePos(diff.seq, position) <= 0) return "ignore"; // already in what we have
  if (diff.prev != null && comparePos(diff.prev, position) > 0) return "gap"; // missed one
  return "apply";
}

/**
 * @typedef {{id: number, username: string, status: string, connections?: number}} Member
 * @typedef {{joins: Member[], leaves: Member[], statuses: Member[]}} Changes
 */

/**
 * Replace a member map's contents with a snapshot, in place (references stay live).
 *
 * @param {Map<number, Member>} members
 * @param {Member[]} users
 * @returns {Changes} who appeared, disappeared or changed status compared with before
 */
export function applySnapshot(members, users) {
  /** @type {Changes} */
  const changes = { joins: [], leaves: [], statuses: [] };
  const fresh = new Map(users.map((u) => [u.id, { ...u }]));
  for (const [id, old] of members) {
    if (!fresh.has(id)) changes.leaves.push({ ...old, status: "offline" });
  }
  for (const [id, user] of fresh) {
    const old = members.get(id);
    if (!old) changes.joins.push(user);
    else if (old.status !== user.status) changes.statuses.push(user);
  }
  members.clear();
  for (const [id, user] of fresh) members.set(id, user);
  return changes;
}

/**
 * Apply one `presence.diff` to a member map, in place.
 *
 * @param {Map<number, Member>} members
 * @param {{join?: Member[], leave?: Member[], status?: Member[]}} diff
 * @returns {Changes}
 */
export function applyDiff(members, diff) {
  /** @type {Changes} */
  const changes = { joins: [], leaves: [], statuses: [] };
  for (const user of diff.join || []) {
    const old = members.get(user.id);
    members.set(user.id, { ...old, ...user });
    if (old) changes.statuses.push(user);
    else changes.joins.push(user);
  }
  for (const user of diff.status || []) {
    const old = members.get(user.id);
    members.set(user.id, { ...old, ...user });
    changes.statuses.push(user);
  }
  for (const user of diff.leave || []) {
    if (members.delete(user.id)) changes.leaves.push(user);
  }
  return changes;
}

/**
 * Call `fn` at most once per `wait` ms (leading edge); later calls within the window are dropped.
 *
 * @template {unknown[]} A
 * @param {(...args: A) => void} fn
 * @param {number} wait
 * @param {{now?: () => number}} [clock]
 * @returns {(...args: A) => boolean} true when this call went through
 */
export function throttle(fn, wait, { now = () => Date.now() } = {}) {
  let last = -Infinity;
  return (...args) => {
    const t = now();
    if (t - last < wait) return false;
    last = t;
    fn(...args);
    return true;
  };
}

// ------------------------------------------------------------------ the client

const defaultClock = {
  setTimeout: (/** @type {() => void} */ fn, /** @type {number} */ ms) =>
    globalThis.setTimeout(fn, ms),
  clearTimeout: (/** @type {any} */ handle) => globalThis.clearTimeout(handle),
  now: () => Date.now(),
};

/** @returns {string} the `csrftoken` cookie, for Django's CSRF check on the token request */
function csrfFromCookie() {
  const cookies = globalThis.document?.cookie || "";
  const match = cookies.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

function defaultUrl() {
  const location = globalThis.location;
  if (!location) throw new TypeError("presence: pass {url} outside a browser page");
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/presence/`;
}

/**
 * One presence connection with its rooms, member lists and reconnect logic.
 * See presence.d.ts for the options and events.
 */
export class PresenceClient {
  /** @param {import("./presence").ClientOptions} [options] */
  constructor(options = {}) {
    /** @type {import("./presence").ClientOptions} */
    this.options = {
      url: undefined,
      token: false,
      tokenUrl: "/api/presence/token/",
      statusUrl: "/api/presence/status/",
      activity: true,
      activityInterval: 30000,
      tokenIn: "protocol",
      global: true,
      lifecycle: true,
      awayAfter: 60000,
      requestTimeout: 10000,
      tooManyDelay: 60000,
      ...options,
    };
    const random = this.options.random || Math.random;
    this._random = random;
    this._backoff = this.options.backoff || fullJitter({ random });
    this._clock = { ...defaultClock, ...this.options.clock };
    /** @type {string} */
    this.state = State.IDLE;
    /** The last `hello` frame (session id, user, heartbeat interval). */
    this.hello = null;
    /** How the last connection ended: {code, reason, error, decision, delay}. */
    this.lastClose = null;
    /** @type {number[]} Delays (ms) of the reconnects scheduled since connect(). */
    this.delays = [];
    this._listeners = new Map();
    /** @type {Map<string | null, {members: Map<number, Member>, seq: string | null, complete: boolean, ready: Deferred | null}>} */
    this._scopes = new Map();
    this._rooms = new Set(); // rooms this client wants to be in, joined again on reconnect
    this._pending = new Map(); // request id -> {resolve, reject, timer}
    this._nextId = 1;
    this._attempt = 0;
    this._generation = 0; // bumped on every attempt and stop: stale async steps check it
    this._ws = null;
    this._timer = null; // reconnect
    this._beat = null; // heartbeat
    this._awayTimer = null;
    this._status = "online"; // chosen by setStatus
    this._autoAway = false; // away because the page has been hidden
    this._lastError = null; // the error frame that came before a close
    this._opened = false;
    this._lifecycleOn = false;
    /** @type {number[]} the watch list, sent again after every reconnect */
    this._watchIds = [];
    /** @type {Map<number, any>} the watched users, updated in place (watch()) */
    this._watched = new Map();
    /** @type {Map<number, number>} user id -> last_active (Unix s), from replies and frames */
    this._lastActive = new Map();
    // The user's input moves last_active; the server throttles too (PRESENCE_ACTIVITY_RESOLUTION).
    this._activity = throttle(() => this._sendActivity(), this.options.activityInterval, {
      now: () => this._clock.now(),
    });
    if (this.options.global) this._scope(null);
  }

  // ---------------------------------------------------------------- events
  /**
   * @param {string} event
   * @param {(detail: any) => void} fn
   * @returns {() => void} unsubscribe
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {(detail: any) => void} fn */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** @param {string} event @param {any} detail */
  _emit(event, detail) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A listener's bug must not break the connection; still surface it.
        const report = this.options.reportError || globalThis.reportError;
        if (report) report(err);
        else
          queueMicrotask(() => {
            throw err;
          });
      }
    }
  }

  /** @param {string} next */
  _setState(next) {
    if (next === this.state) return;
    const previous = this.state;
    this.state = next;
    this._emit("state", { state: next, previous });
  }

  // ---------------------------------------------------------------- connection
  /**
   * Open the connection (no-op while connecting or open). Options given here are merged in.
   *
   * @param {Partial<import("./presence").ClientOptions>} [options]
   * @returns {this}
   */
  connect(options) {
    if (options) Object.assign(this.options, options);
    if (this.state === State.CONNECTING || this.state === State.OPEN) return this;
    this._installLifecycle();
    this._attempt = 0;
    this.delays = [];
    this._clearTimer();
    this._open();
    return this;
  }

  /** Close for good (code 1000): no reconnect until `connect()` is called again. */
  disconnect() {
    this._stop(State.CLOSED, { code: CloseCode.NORMAL, reason: "disconnect()" });
  }

  async _open() {
    const generation = ++this._generation;
    this._setState(State.CONNECTING);
    let url;
    const protocols = [SUBPROTOCOL];
    try {
      url = this.options.url || defaultUrl();
      if (this.options.token) {
        // Tokens are single-use: a fresh one for every attempt.
        const token = await this._fetchToken();
        if (generation !== this._generation) return; // stopped meanwhile
        // A subprotocol must be an HTTP token (RFC 6455): a server whose tokens are not
        // (older ones, signed with ":") gets it in the query string rather than a failed open.
        if (this.options.tokenIn === "query" || !SUBPROTOCOL_SAFE.test(token)) {
          url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
        } else {
          protocols.push(TOKEN_SUBPROTOCOL_PREFIX + token);
        }
      }
    } catch (err) {
      if (generation !== this._generation) return;
      const status = /** @type {any} */ (err)?.status;
      if (status === 401 || status === 403) {
        // No logged-in user to mint a token for: the same as a 4401.
        this._closed({ code: CloseCode.UNAUTHORIZED, reason: "token refused", wasClean: false });
      } else {
        this._closed({ code: CloseCode.ABNORMAL, reason: String(err), wasClean: false });
      }
      return;
    }
    const WebSocketImpl = this.options.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      ws = new WebSocketImpl(url, protocols);
    } catch (err) {
      // A malformed URL or subprotocol (SyntaxError): reported like a failed handshake.
      this._closed({ code: CloseCode.ABNORMAL, reason: String(err), wasClean: false });
      return;
    }
    this._ws = ws;
    this._lastError = null;
    ws.onmessage = (/** @type {{data: string}} */ event) => {
      if (ws === this._ws) this._frame(event.data);
    };
    ws.onclose = (/** @type {{code: number, reason: string, wasClean: boolean}} */ event) => {
      if (ws !== this._ws) return;
      this._detach();
      this._closed({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    };
    ws.onerror = () => {}; // a close event always follows
  }

  async _fetchToken() {
    const token = this.options.token;
    if (typeof token === "function") return await token();
    const csrf = this.options.csrfToken;
    const response = await (this.options.fetch || globalThis.fetch)(this.options.tokenUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": typeof csrf === "function" ? csrf() : csrf || csrfFromCookie() },
    });
    if (!response.ok) {
      const err = new PresenceError("token_refused", `token request: HTTP ${response.status}`);
      /** @type {any} */ (err).status = response.status;
      throw err;
    }
    return (await response.json()).token;
  }

  /**
   * Forget the current socket (its late events are ignored) and close it.
   * @param {number} [code]
   * @param {string} [reason]
   */
  _detach(code = CloseCode.NORMAL, reason = "") {
    const ws = this._ws;
    this._ws = null;
    this._stopHeartbeat();
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === 0 || ws.readyState === 1) {
        try {
          ws.close(code, reason);
        } catch {
          // already closing
        }
      }
    }
    const failure = new PresenceError("disconnected", "the connection closed");
    for (const [, request] of this._pending) {
      this._clock.clearTimeout(request.timer);
      request.reject(failure);
    }
    this._pending.clear();
    for (const scope of this._scopes.values()) scope.seq = null; // positions die with it
  }

  /**
   * The socket closed (or could not open): decide by the close code.
   * @param {{code: number, reason?: string, wasClean?: boolean}} event
   */
  _closed(event) {
    const error = this._lastError;
    this._lastError = null;
    const decision = closeDecision(event.code);
    const info = {
      code: event.code,
      reason: event.reason || error?.message || "",
      error,
      decision,
      delay: /** @type {number | null} */ (null),
    };
    if (decision === "unauthorized" || decision === "stop") {
      this.lastClose = info;
      this._stopTimers();
      this._generation++;
      this._setState(State.CLOSED);
      this._emit("close", info);
      this._rejectReadies(new PresenceError(error?.code || "closed", info.reason));
      if (decision === "unauthorized") {
        this._emit("unauthorized", info);
        this.options.onUnauthorized?.(info);
      }
      return;
    }
    let delay = this._backoff(this._attempt++);
    if (decision === "slow") {
      // The server may say how long (retry_after, seconds); otherwise a long default.
      const after = error?.retry_after;
      delay += typeof after === "number" ? after * 1000 : this.options.tooManyDelay;
    }
    info.delay = delay;
    this.lastClose = info;
    this.delays.push(delay);
    this._setState(State.WAITING);
    this._emit("close", info);
    this._clearTimer();
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  /**
   * Close without reconnecting: by the caller (`closed`) or for the page lifecycle (`suspended`).
   * @param {string} state
   * @param {{code: number, reason: string}} why
   */
  _stop(state, why) {
    this._generation++;
    this._stopTimers();
    const had = this._ws !== null;
    this._detach(why.code, why.reason);
    if (this.state === State.IDLE && state === State.SUSPENDED) return;
    this.lastClose = { ...why, error: null, decision: "stop", delay: null };
    this._setState(state);
    if (had) this._emit("close", this.lastClose);
  }

  _clearTimer() {
    if (this._timer !== null) this._clock.clearTimeout(this._timer);
    this._timer = null;
  }

  _stopTimers() {
    this._clearTimer();
    this._stopHeartbeat();
  }

  // ---------------------------------------------------------------- frames in
  /** @param {string} text */
  _frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.id != null && this._pending.has(frame.id)) {
      const request = this._pending.get(frame.id);
      this._pending.delete(frame.id);
      this._clock.clearTimeout(request.timer);
      if (frame.type === "error") request.reject(new PresenceError(frame.code, frame.message));
      else request.resolve(frame.data ?? null);
      return;
    }
    switch (frame.type) {
      case "hello":
        this._hello(frame);
        return;
      case "presence.diff":
        this._diff(frame);
        return;
      case "presence.state":
        this._snapshot(frame.room ?? null, frame);
        return;
      case "presence.watch":
        this._watchFrame(frame);
        return;
      case "error":
        // Unanswerable errors (rate_limited…), and the reason sent before every 4xxx close.
        this._lastError = { code: frame.code, message: frame.message };
        if (typeof frame.retry_after === "number") this._lastError.retry_after = frame.retry_after;
        this._emit("error", this._lastError);
        return;
      default:
        this._emit("message", frame);
        if (typeof frame.type === "string") this._emit(frame.type, frame);
    }
  }

  /** @param {any} hello */
  _hello(hello) {
    this.hello = hello;
    const reconnected = this._opened;
    this._opened = true;
    this._attempt = 0;
    this._setState(State.OPEN);
    this._startHeartbeat(Number(hello.heartbeat_interval) || 25);
    // Positions belong to the connection: every scope is loaded again.
    if (this._scopes.has(null)) this._sync(null);
    for (const room of this._rooms) this._joinOnServer(room);
    if (this.ownStatus !== "online") this._sendStatus();
    if (this._watchIds.length) this._sendWatch();
    this._emit("open", { hello, reconnected });
  }

  /** @param {any} diff */
  _diff(diff) {
    const room = diff.room ?? null;
    const scope = this._scopes.get(room);
    if (!scope) return;
    const action = diffAction(scope.seq, diff);
    if (action === "gap") {
      this._emit("gap", { room, seq: scope.seq, prev: diff.prev });
      this._sync(room);
      return;
    }
    if (action === "ignore") return;
    scope.seq = diff.seq;
    this._changed(room, scope, applyDiff(scope.members, diff), false);
  }

  /**
   * A snapshot (a reply to presence.sync or room.join, or a presence.state frame).
   * @param {string | null} room
   * @param {{users: Member[], seq: string, complete?: boolean}} data
   */
  _snapshot(room, data) {
    const scope = this._scopes.get(room);
    if (!scope) return;
    scope.seq = data.seq ?? null;
    scope.complete = data.complete !== false;
    this._changed(room, scope, applySnapshot(scope.members, data.users || []), true);
    if (scope.ready) {
      scope.ready.resolve(scope.members);
      scope.ready = null;
    }
  }

  /**
   * @param {string | null} room
   * @param {{members: Map<number, Member>}} scope
   * @param {Changes} changes
   * @param {boolean} snapshot
   */
  _changed(room, scope, changes, snapshot) {
    for (const user of changes.joins) this._emit("join", { room, user, snapshot });
    for (const user of changes.leaves) this._emit("leave", { room, user, snapshot });
    for (const user of changes.statuses) this._emit("status", { room, user, snapshot });
    this._emit("members", { room, members: scope.members, snapshot });
  }

  /** Load a scope again (its position is unknown); its diffs are ignored meanwhile. */
  /** @param {string | null} room */
  _sync(room) {
    const scope = this._scopes.get(room);
    if (!scope || this.state !== State.OPEN) return;
    scope.seq = null;
    this.send("presence.sync", { room }).then(
      (data) => {
        if (this._scopes.get(room) === scope) this._snapshot(room, data);
      },
      (err) => this._requestFailed(room, err),
    );
  }

  /** @param {string} room */
  _joinOnServer(room) {
    const scope = this._scopes.get(room);
    if (!scope) return;
    scope.seq = null;
    this.send("room.join", { room }).then(
      (data) => {
        if (this._scopes.get(room) === scope) this._snapshot(room, data);
      },
      (err) => this._requestFailed(room, err),
    );
  }

  /**
   * A join or sync failed. The connection closing is retried on reconnect; a refusal
   * (invalid room, too many rooms) gives the room up.
   * @param {string | null} room
   * @param {any} err
   */
  _requestFailed(room, err) {
    if (err?.code === "disconnected") return;
    if (err?.code === "timeout") {
      this._drop("request timed out");
      return;
    }
    this._emit("error", { code: err?.code, message: err?.message, room });
    if (room !== null && this._rooms.has(room)) {
      const scope = this._scopes.get(room);
      this._rooms.delete(room);
      this._scopes.delete(room);
      scope?.ready?.reject(err);
    }
  }

  /** A connection that stopped answering: give it up and reconnect (as after a 1006). */
  /** @param {string} reason */
  _drop(reason) {
    if (!this._ws) return;
    this._detach(4000, reason);
    this._closed({ code: CloseCode.ABNORMAL, reason, wasClean: false });
  }

  /** @param {Error} err */
  _rejectReadies(err) {
    for (const scope of this._scopes.values()) {
      if (scope.ready) {
        scope.ready.promise.catch(() => {}); // nobody may be waiting
        scope.ready.reject(err);
        scope.ready = null;
      }
    }
  }

  /** @param {string | null} room */
  _scope(room) {
    let scope = this._scopes.get(room);
    if (!scope) {
      scope = { members: new Map(), seq: null, complete: true, ready: null };
      this._scopes.set(room, scope);
    }
    return scope;
  }

  // ---------------------------------------------------------------- heartbeats
  /** @param {number} seconds */
  _startHeartbeat(seconds) {
    this._stopHeartbeat();
    const interval = seconds * 1000;
    // No answer to a heartbeat within an interval (at least requestTimeout): the connection
    // is dead (half-open) and the server will drop it soon anyway.
    const timeout = Math.max(interval, this.options.requestTimeout);
    const beat = () => {
      this.send("heartbeat", undefined, { timeout }).catch((err) => {
        if (err?.code === "timeout") this._drop("no heartbeat reply");
      });
      this._beat = this._clock.setTimeout(beat, interval);
    };
    // The first one jittered, so clients that connected together do not beat together.
    this._beat = this._clock.setTimeout(beat, this._random() * interval);
  }

  _stopHeartbeat() {
    if (this._beat !== null) this._clock.clearTimeout(this._beat);
    this._beat = null;
  }

  // ---------------------------------------------------------------- requests
  /**
   * Send a request; resolves with the reply's `data`, rejects with a PresenceError on an
   * `error` answer, on timeout, or when the connection closes first.
   *
   * @param {string} type
   * @param {Record<string, unknown>} [data]
   * @param {{timeout?: number}} [options]
   * @returns {Promise<any>}
   */
  send(type, data, { timeout = this.options.requestTimeout } = {}) {
    const ws = this._ws;
    if (this.state !== State.OPEN || !ws) {
      return Promise.reject(new PresenceError("not_connected", `not connected (${this.state})`));
    }
    const id = this._nextId++;
    /** @type {Record<string, unknown>} */
    const frame = { type, id };
    if (data !== undefined) frame.data = data;
    return new Promise((resolve, reject) => {
      const timer = this._clock.setTimeout(() => {
        this._pending.delete(id);
        reject(new PresenceError("timeout", `no answer to ${type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify(frame));
      } catch (err) {
        this._clock.clearTimeout(timer);
        this._pending.delete(id);
        reject(new PresenceError("disconnected", String(err)));
      }
    });
  }

  /**
   * Join a room (again after every reconnect, until `leave`). Resolves with its live member
   * map once the server's snapshot is in.
   *
   * @param {string} room
   * @returns {Promise<Map<number, Member>>}
   */
  join(room) {
    if (!ROOM_RE.test(room)) {
      return Promise.reject(
        new PresenceError("invalid_payload", "room: 1-64 characters of A-Z a-z 0-9 _ . : -"),
      );
    }
    const fresh = !this._rooms.has(room);
    this._rooms.add(room);
    const scope = this._scope(room);
    if (scope.seq !== null && !fresh) return Promise.resolve(scope.members);
    if (!scope.ready) scope.ready = deferred();
    const { promise } = scope.ready;
    if (fresh && this.state === State.OPEN) this._joinOnServer(room);
    return promise;
  }

  /**
   * Leave a room: no more diffs, its member map is emptied.
   * @param {string} room
   * @returns {Promise<void>}
   */
  async leave(room) {
    const scope = this._scopes.get(room);
    this._rooms.delete(room);
    this._scopes.delete(room);
    if (scope) {
      scope.ready?.reject(new PresenceError("left", `left ${room}`));
      scope.ready?.promise.catch(() => {});
      const changes = applySnapshot(scope.members, []);
      this._changed(room, scope, changes, true);
    }
    if (this.state === State.OPEN) await this.send("room.leave", { room });
  }

  /**
   * The live member map of a joined room, or of everyone online (`null`, the default).
   * The same Map object is updated in place by diffs; empty for a room not joined.
   *
   * @param {string | null} [room]
   * @returns {Map<number, Member>}
   */
  members(room = null) {
    return this._scopes.get(room)?.members ?? new Map();
  }

  /** Rooms this client is in (or will join once connected). */
  get rooms() {
    return [...this._rooms];
  }

  /** The status others see from this client: the chosen one, or `away` while hidden. */
  get ownStatus() {
    return this._autoAway ? "away" : this._status;
  }

  /**
   * Set this user's status (`online`, `away`, `busy`); kept and sent again after a reconnect.
   * @param {string} status
   * @returns {Promise<void>}
   */
  async setStatus(status) {
    if (!STATUSES.includes(status)) {
      throw new PresenceError("invalid_payload", `status: one of ${STATUSES.join(", ")}`);
    }
    this._status = status;
    this._autoAway = false;
    if (this.state === State.OPEN) await this._sendStatus();
  }

  _sendStatus() {
    const status = this.ownStatus;
    this._emit("ownstatus", { status, auto: this._autoAway });
    return this.send("status.set", { status }).catch((err) => {
      if (err?.code !== "disconnected") this._emit("error", { code: err?.code, message: err?.message });
    });
  }

  // ---------------------------------------------------------------- other users
  /**
   * Watch these users (replaces the list; `[]` stops watching). Returns the live Map of the
   * watched users (id -> {id, username, online, status, last_seen, last_active}), filled
   * when the server's reply is in and updated in place by its `presence.watch` frames;
   * each change is a `watch` event. The list is sent again after every reconnect.
   *
   * @param {number[]} ids
   * @returns {Map<number, any>}
   */
  watch(ids) {
    this._watchIds = [...new Set(ids.map(Number))];
    const wanted = new Set(this._watchIds);
    for (const id of [...this._watched.keys()]) if (!wanted.has(id)) this._watched.delete(id);
    if (this.state === State.OPEN) this._sendWatch();
    return this._watched;
  }

  /** The live Map of watched users (the one `watch()` returns). */
  get watched() {
    return this._watched;
  }

  _sendWatch() {
    const ids = this._watchIds;
    this.send("presence.watch", { users: ids }).then(
      (data) => {
        if (ids !== this._watchIds) return; // a newer list was sent meanwhile
        this._watched.clear();
        for (const user of data?.users || []) {
          this._watched.set(user.id, user);
          this._noteActive(user);
        }
        this._emit("watch", { event: "snapshot", user: null, watched: this._watched });
      },
      (err) => {
        if (err?.code !== "disconnected") this._emit("error", { code: err?.code, message: err?.message });
      },
    );
  }

  /** @param {any} frame a `presence.watch` frame */
  _watchFrame(frame) {
    const user = frame.user;
    if (!user || !this._watchIds.includes(user.id)) return;
    const merged = { ...(this._watched.get(user.id) || {}), ...user };
    this._watched.set(user.id, merged);
    this._noteActive(merged);
    this._emit("watch", { event: frame.event, user: merged, watched: this._watched });
  }

  /** @param {{id: number, last_active?: number | null}} user */
  _noteActive(user) {
    if (typeof user.last_active === "number") {
      const known = this._lastActive.get(user.id);
      if (known === undefined || user.last_active > known) this._lastActive.set(user.id, user.last_active);
    }
  }

  /**
   * When a user this client has heard of was last active (Unix seconds), or null.
   * @param {number} id
   * @returns {number | null}
   */
  lastActive(id) {
    return this._lastActive.get(Number(id)) ?? null;
  }

  /**
   * Many users' presence over HTTP (`POST /api/presence/status/`, at most 1,000 ids):
   * [{id, online, status, last_seen, last_active}], in the order asked.
   *
   * @param {number[]} ids
   * @returns {Promise<any[]>}
   */
  async status(ids) {
    const csrf = this.options.csrfToken;
    const response = await (this.options.fetch || globalThis.fetch)(this.options.statusUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRFToken": typeof csrf === "function" ? csrf() : csrf || csrfFromCookie(),
      },
      body: JSON.stringify({ users: ids }),
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      throw new PresenceError(body?.code || `http_${response.status}`, body?.error || `HTTP ${response.status}`);
    }
    for (const user of body.users) this._noteActive(user);
    return body.users;
  }

  /** The user did something (key, pointer): tell the server, at most once per activityInterval. */
  activity() {
    return this._activity();
  }

  _sendActivity() {
    const ws = this._ws;
    if (this.state !== State.OPEN || !ws) return;
    try {
      ws.send(JSON.stringify({ type: "activity" })); // no id: the server does not answer
    } catch {
      // closing: the connect of the next socket counts as activity anyway
    }
  }

  /**
   * A throttled sender of typing-like signals for one room (see TypingSignal).
   * @param {string} room
   * @param {{type?: string, interval?: number, idle?: number}} [options]
   */
  typing(room, options) {
    return new TypingSignal(this, room, { clock: this._clock, ...options });
  }

  // ---------------------------------------------------------------- page lifecycle
  _installLifecycle() {
    if (this._lifecycleOn || !this.options.lifecycle) return;
    const win = this.options.window ?? (typeof window === "undefined" ? undefined : window);
    const doc = this.options.document ?? /** @type {any} */ (win)?.document;
    if (!win) return;
    this._lifecycleOn = true;
    // pagehide/freeze: close now. A page in the back/forward cache would otherwise keep its
    // socket, and its user would stay online on a page nobody sees.
    const suspend = () => {
      if (this.state !== State.IDLE && this.state !== State.CLOSED) {
        this._stop(State.SUSPENDED, { code: CloseCode.NORMAL, reason: "page hidden" });
      }
    };
    const resume = () => {
      if (this.state === State.SUSPENDED) {
        this._attempt = 0;
        this._open();
      }
    };
    if (this.options.activity) {
      for (const type of ["keydown", "pointerdown", "wheel", "touchstart"]) {
        win.addEventListener(type, () => this._activity(), { passive: true, capture: true });
      }
    }
    win.addEventListener("pagehide", suspend);
    win.addEventListener("pageshow", resume);
    // The device's network is back: no reason to sit out the rest of a back-off.
    win.addEventListener("online", () => {
      if (this.state === State.WAITING) {
        this._clearTimer();
        this._open();
      }
    });
    if (doc) {
      doc.addEventListener("freeze", suspend);
      doc.addEventListener("resume", resume);
      doc.addEventListener("visibilitychange", () => this._visibility(doc.visibilityState));
      if (doc.visibilityState === "hidden") this._visibility("hidden");
    }
  }

  /** Hidden long enough → away; visible → back to the chosen status. */
  /** @param {string} visibility */
  _visibility(visibility) {
    if (this._awayTimer !== null) this._clock.clearTimeout(this._awayTimer);
    this._awayTimer = null;
    const after = this.options.awayAfter;
    if (visibility === "hidden") {
      if (after == null || after < 0) return;
      this._awayTimer = this._clock.setTimeout(() => {
        this._awayTimer = null;
        if (this._status === "online" && !this._autoAway) {
          this._autoAway = true;
          if (this.state === State.OPEN) this._sendStatus();
        }
      }, after);
    } else if (this._autoAway) {
      this._autoAway = false;
      if (this.state === State.OPEN) this._sendStatus();
    }
  }
}

/**
 * Typing-like signals for a room: `keystroke()` sends `{typing: true}` at most once per
 * `interval` ms; after `idle` ms without keystrokes (or on `stop()`) it sends `{typing: false}`.
 */
export class TypingSignal {
  /**
   * @param {PresenceClient} client
   * @param {string} room
   * @param {{type?: string, interval?: number, idle?: number, clock?: any}} [options]
   */
  constructor(client, room, { type = "chat.typing", interval = 3000, idle = 4000, clock } = {}) {
    this.client = client;
    this.room = room;
    this.type = type;
    this.interval = interval;
    this.idle = idle;
    this.clock = { ...defaultClock, ...clock };
    this.active = false;
    this._last = -Infinity;
    this._idleTimer = null;
  }

  /** Call on every keystroke; returns true when a frame went out. */
  keystroke() {
    const now = this.clock.now();
    let sent = false;
    if (!this.active || now - this._last >= this.interval) {
      this._last = now;
      this.active = true;
      this._send(true);
      sent = true;
    }
    if (this._idleTimer !== null) this.clock.clearTimeout(this._idleTimer);
    this._idleTimer = this.clock.setTimeout(() => this.stop(), this.idle);
    return sent;
  }

  /** Typing stopped (message sent, field left): tells the room at once if it was told. */
  stop() {
    if (this._idleTimer !== null) this.clock.clearTimeout(this._idleTimer);
    this._idleTimer = null;
    if (!this.active) return;
    this.active = false;
    this._last = -Infinity;
    this._send(false);
  }

  /** @param {boolean} typing */
  _send(typing) {
    // Best effort: a signal lost to a reconnect is not worth an error.
    this.client.send(this.type, { room: this.room, typing }).catch(() => {});
  }
}

/**
 * Create a client and connect it.
 * @param {import("./presence").ClientOptions} [options]
 * @returns {PresenceClient}
 */
export function connect(options) {
  return new PresenceClient(options).connect();
}

/**
 * @typedef {{promise: Promise<any>, resolve: (v: any) => void, reject: (e: any) => void}} Deferred
 * @returns {Deferred}
 */
function deferred() {
  /** @type {any} */
  const d = {};
  d.promise = new Promise((resolve, reject) => {
    d.resolve = resolve;
    d.reject = reject;
  });
  return d;
}
