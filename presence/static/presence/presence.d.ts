// Type declarations for presence.js (protocol v2 browser client). Guide: docs/client.md.

export declare const SUBPROTOCOL: "presence.v2";
export declare const TOKEN_SUBPROTOCOL_PREFIX: "presence.token.";

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  TOO_BIG: 1009;
  SERVICE_RESTART: 1012;
  TRY_AGAIN: 1013;
  UNAUTHORIZED: 4401;
  FORBIDDEN: 4403;
  EXPIRED: 4408;
  TERMINATED: 4410;
  TOO_MANY: 4429;
}>;

export type ConnectionState = "idle" | "connecting" | "open" | "waiting" | "suspended" | "closed";
export declare const State: Readonly<{
  IDLE: "idle";
  CONNECTING: "connecting";
  OPEN: "open";
  WAITING: "waiting";
  SUSPENDED: "suspended";
  CLOSED: "closed";
}>;

export type Status = "online" | "away" | "busy";
export declare const STATUSES: readonly Status[];

export interface Member {
  id: number;
  username: string;
  status: Status | "offline";
  /** The user's live connections (snapshots only; diffs do not carry it). */
  connections?: number;
}

export type MemberMap = Map<number, Member>;

/** A watched user (`watch()`), or one answer of `status()` (no `username` there). */
export interface UserPresence {
  id: number;
  username?: string;
  online: boolean;
  status: Status | "offline";
  /** ISO 8601; null while online or never seen. */
  last_seen?: string | null;
  /** Unix seconds of the last connect or activity; null before any. */
  last_active?: number | null;
}

export type WatchMap = Map<number, UserPresence>;

export interface Changes {
  joins: Member[];
  leaves: Member[];
  statuses: Member[];
}

export type CloseDecision = "unauthorized" | "stop" | "slow" | "reconnect";

export interface CloseInfo {
  code: number;
  reason: string;
  /** The `error` frame the server sent before closing, if any. */
  error: { code: string; message: string; retry_after?: number } | null;
  decision: CloseDecision;
  /** Milliseconds until the reconnect, or null when the client stopped. */
  delay: number | null;
}

export interface Hello {
  type: "hello";
  session_id: string;
  user: { id: number; username: string };
  heartbeat_interval: number;
  presence_ttl: number;
  protocol?: number;
}

export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export interface ClientOptions {
  /** Default: `ws[s]://<this page's host>/ws/presence/`. */
  url?: string;
  /**
   * false (default): the session cookie authenticates. true: a single-use token from
   * `tokenUrl` for every attempt. A function: your own token source.
   */
  token?: boolean | (() => string | Promise<string>);
  /** Default `/api/presence/token/`. */
  tokenUrl?: string;
  /** Default `/api/presence/status/` (`status(ids)`). */
  statusUrl?: string;
  /** Send `activity` frames on the user's input (keys, pointer, wheel, touch). Default true. */
  activity?: boolean;
  /** Milliseconds between two `activity` frames at most. Default 30000. */
  activityInterval?: number;
  /** Where the token goes: `"protocol"` (default, `presence.token.<token>`) or `"query"`. */
  tokenIn?: "protocol" | "query";
  /** CSRF token for the token request; default: the `csrftoken` cookie. */
  csrfToken?: string | (() => string);
  /** Keep the global member list (`members(null)`) with `presence.sync`. Default true. */
  global?: boolean;
  /** Close on pagehide/freeze, reconnect on pageshow/resume, away while hidden. Default true. */
  lifecycle?: boolean;
  /** Milliseconds hidden before the status turns `away`; null: never. Default 60000. */
  awayAfter?: number | null;
  /** Milliseconds before `send()` rejects with `timeout`. Default 10000. */
  requestTimeout?: number;
  /** Extra milliseconds before reconnecting after 4429 without `retry_after`. Default 60000. */
  tooManyDelay?: number;
  /** Reconnect delay for an attempt (0-based); default fullJitter() capped at 30 s. */
  backoff?: (attempt: number) => number;
  onUnauthorized?: (info: CloseInfo) => void;
  /** Where an exception thrown by an event listener goes; default the page's `reportError`. */
  reportError?: (error: unknown) => void;
  // For tests and non-browser hosts:
  WebSocket?: new (url: string, protocols?: string[]) => WebSocket;
  fetch?: typeof fetch;
  clock?: Partial<Clock>;
  random?: () => number;
  window?: EventTarget;
  document?: EventTarget & { visibilityState: string };
}

export interface PresenceEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  open: { hello: Hello; reconnected: boolean };
  close: CloseInfo;
  unauthorized: CloseInfo;
  error: { code: string; message: string; room?: string | null };
  join: { room: string | null; user: Member; snapshot: boolean };
  leave: { room: string | null; user: Member; snapshot: boolean };
  status: { room: string | null; user: Member; snapshot: boolean };
  members: { room: string | null; members: MemberMap; snapshot: boolean };
  gap: { room: string | null; seq: string | null; prev: string };
  ownstatus: { status: Status; auto: boolean };
  /** A watched user changed (`online`, `offline`, `status`), or the list was (re)loaded. */
  watch: { event: "snapshot" | "online" | "offline" | "status"; user: UserPresence | null; watched: WatchMap };
  /** Every other server frame (application types such as `chat.typing`). */
  message: { type: string; [key: string]: unknown };
}

export declare class PresenceError extends Error {
  constructor(code: string, message: string);
  /** The `error` frame's code, or `timeout`, `disconnected`, `not_connected`, `left`. */
  code: string;
}

export declare class PresenceClient {
  constructor(options?: ClientOptions);
  readonly options: ClientOptions;
  readonly state: ConnectionState;
  readonly hello: Hello | null;
  readonly lastClose: CloseInfo | null;
  /** Reconnect delays (ms) scheduled since `connect()`. */
  readonly delays: number[];
  readonly rooms: string[];
  /** The status others see from this client (was `status` before `status(ids)` existed). */
  readonly ownStatus: Status;
  /** The live Map `watch()` returns. */
  readonly watched: WatchMap;
  connect(options?: Partial<ClientOptions>): this;
  disconnect(): void;
  on<K extends keyof PresenceEvents>(event: K, fn: (detail: PresenceEvents[K]) => void): () => void;
  on(event: string, fn: (frame: any) => void): () => void;
  off(event: string, fn: (detail: any) => void): void;
  send<T = any>(type: string, data?: Record<string, unknown>, options?: { timeout?: number }): Promise<T>;
  join(room: string): Promise<MemberMap>;
  leave(room: string): Promise<void>;
  members(room?: string | null): MemberMap;
  setStatus(status: Status): Promise<void>;
  /** Watch these users (replaces the list; `[]` stops). The live Map of the watched users. */
  watch(ids: number[]): WatchMap;
  /** Many users' presence over HTTP (`POST /api/presence/status/`, at most 1,000 ids). */
  status(ids: number[]): Promise<UserPresence[]>;
  /** When a user this client has heard of was last active (Unix seconds), or null. */
  lastActive(id: number): number | null;
  /** The user did something: an `activity` frame, at most once per `activityInterval`. */
  activity(): boolean;
  typing(room: string, options?: { type?: string; interval?: number; idle?: number }): TypingSignal;
}

export declare class TypingSignal {
  constructor(
    client: PresenceClient,
    room: string,
    options?: { type?: string; interval?: number; idle?: number; clock?: Partial<Clock> },
  );
  readonly active: boolean;
  keystroke(): boolean;
  stop(): void;
}

export declare function connect(options?: ClientOptions): PresenceClient;
export declare function fullJitter(options?: {
  base?: number;
  cap?: number;
  random?: () => number;
}): (attempt: number) => number;
export declare function closeDecision(code: number): CloseDecision;
export declare function comparePos(a: string | null | undefined, b: string | null | undefined): number;
export declare function diffAction(
  position: string | null,
  diff: { seq: string; prev?: string | null },
): "apply" | "ignore" | "gap";
export declare function applySnapshot(members: MemberMap, users: Member[]): Changes;
export declare function applyDiff(
  members: MemberMap,
  diff: { join?: Member[]; leave?: Member[]; status?: Member[] },
): Changes;
export declare function throttle<A extends unknown[]>(
  fn: (...args: A) => void,
  wait: number,
  clock?: { now?: () => number },
): (...args: A) => boolean;
