// The demo page at `/`, built on presence.js only: connection state, rooms, live member lists,
// a throttled typing indicator and a readable event log. No framework; DOM through textContent.
import { PresenceClient } from "@presence/client";

const $ = (selector) => document.querySelector(selector);
const me = Number($("#app").dataset.userId);
const ROOMS_KEY = "presence-demo.rooms"; // per tab: a reload keeps its rooms
const TYPING_SHOWN_FOR = 6000; // a typing notice without news disappears after this

const client = new PresenceClient({
  onUnauthorized: () => notice("Your login session ended.", { href: "/accounts/login/?next=/", text: "Log in again" }),
});
// For the console and the browser tests.
window.presenceDemo = { client, restoredFromCache: 0 };
window.addEventListener("pageshow", (event) => {
  if (event.persisted) {
    window.presenceDemo.restoredFromCache += 1;
    addLog("Back from the back/forward cache");
  }
});

let current = null; // the room shown in the members card
let typingSignal = null;
const typingNow = new Map(); // room -> Map(user id -> {username, timer})

// ---------------------------------------------------------------- event log
const log = $("#log");
function addLog(text, kind = "") {
  const item = document.createElement("li");
  if (kind) item.className = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  item.append(time, " ", text);
  log.prepend(item);
  while (log.children.length > 200) log.lastElementChild.remove();
}

// ---------------------------------------------------------------- connection state
const state = $("#state");
const STATE_TEXT = {
  idle: "starting…",
  connecting: "connecting…",
  open: "online",
  suspended: "paused",
  closed: "disconnected",
};
let countdown = null;

function showState() {
  clearInterval(countdown);
  state.dataset.state = client.state;
  document.body.dataset.state = client.state; // lists are dimmed while not connected
  $("#message").disabled = !current || client.state !== "open";
  if (client.state === "waiting" && client.lastClose?.delay != null) {
    const at = Date.now() + client.lastClose.delay;
    const tick = () => {
      state.textContent = `reconnecting in ${Math.max(0, (at - Date.now()) / 1000).toFixed(1)} s`;
    };
    tick();
    countdown = setInterval(tick, 100);
  } else {
    state.textContent = STATE_TEXT[client.state] || client.state;
  }
}

function notice(text, link) {
  const box = $("#notice");
  box.replaceChildren(text);
  if (link) {
    const a = document.createElement("a");
    a.href = link.href;
    a.textContent = link.text;
    box.append(" ", a);
  }
  box.hidden = false;
}

function reconnectButton() {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Reconnect";
  button.addEventListener("click", () => {
    $("#notice").hidden = true;
    client.connect();
  });
  return button;
}

client.on("state", showState);
client.on("open", ({ hello, reconnected }) => {
  $("#notice").hidden = true;
  addLog(`${reconnected ? "Reconnected" : "Connected"} (session ${hello.session_id.slice(0, 8)})`, "ok");
});
client.on("close", (info) => {
  const why = info.reason ? `: ${info.reason}` : "";
  if (info.decision === "reconnect" || info.decision === "slow") {
    addLog(`Connection lost (${info.code}${why}); reconnecting in ${(info.delay / 1000).toFixed(1)} s`, "warn");
  } else if (info.code === 4401 || info.decision === "unauthorized") {
    addLog(`Disconnected (${info.code}${why}): log in again`, "bad");
  } else if (info.code === 1000) {
    addLog(info.reason === "page hidden" ? "Paused while the page is hidden" : "Disconnected");
  } else {
    const who = info.code === 4410 ? "by an operator" : `(${info.code})`;
    addLog(`Disconnected ${who}${why}. Not reconnecting.`, "bad");
    notice(`Disconnected ${who}${why}.`);
    $("#notice").append(" ", reconnectButton());
  }
});
// The error frame that comes before a 4xxx close is reported with the close.
const CLOSE_REASONS = new Set([
  ...["unauthorized", "session_ended", "credentials_changed", "session_revoked", "token_revoked"],
  ...["token_used", "account_deleted", "forbidden", "account_disabled", "blocked", "terminated"],
  ...["presence_expired", "flooding", "too_many_connections", "connect_rate_limited", "unavailable"],
]);
client.on("error", ({ code, message, room }) => {
  if (!CLOSE_REASONS.has(code)) addLog(`Error ${code}${room ? ` in ${room}` : ""}: ${message}`, "bad");
});

// ---------------------------------------------------------------- people
const STATUS_ORDER = { online: 0, busy: 1, away: 2 };

function renderPeople(list, members) {
  const people = [...members.values()].sort(
    (a, b) => (STATUS_ORDER[a.status] ?? 9) - (STATUS_ORDER[b.status] ?? 9) || a.username.localeCompare(b.username),
  );
  list.replaceChildren(
    ...people.map((user) => {
      const item = document.createElement("li");
      item.dataset.userId = user.id;
      item.dataset.status = user.status;
      const dot = document.createElement("span");
      dot.className = `dot ${user.status}`;
      dot.setAttribute("aria-hidden", "true");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = user.id === me ? `${user.username} (you)` : user.username;
      const status = document.createElement("span");
      status.className = "state";
      status.textContent = user.status;
      item.append(dot, name, status);
      return item;
    }),
  );
}

function renderOnline() {
  const members = client.members(null);
  renderPeople($("#online"), members);
  $("#online-count").textContent = `(${members.size})`;
}

function renderMembers() {
  $("#current-room").textContent = current ?? "—";
  const members = current ? client.members(current) : new Map();
  renderPeople($("#members"), members);
  $("#member-count").textContent = current ? `(${members.size})` : "";
  $("#message").disabled = !current || client.state !== "open";
  renderTyping();
}

client.on("members", ({ room }) => {
  if (room === null) renderOnline();
  else if (room === current) renderMembers();
});
// Global scope: one line per person per change; rooms: who came and went.
client.on("join", ({ room, user, snapshot }) => {
  if (snapshot || user.id === me) return;
  addLog(room === null ? `${user.username} came online` : `${user.username} joined ${room}`);
});
client.on("leave", ({ room, user, snapshot }) => {
  if (snapshot && room !== null) return;
  if (user.id === me) return;
  if (room !== null) clearTyping(room, user.id);
  addLog(room === null ? `${user.username} went offline` : `${user.username} left ${room}`);
});
client.on("status", ({ room, user, snapshot }) => {
  if (room === null && !snapshot) addLog(`${user.id === me ? "You are" : `${user.username} is`} now ${user.status}`);
});
client.on("ownstatus", ({ auto }) => {
  if (auto) addLog("Page hidden for a while: you show as away");
});

// ---------------------------------------------------------------- watching
const WATCH_KEY = "presence-demo.watch"; // per tab, like the rooms

function ago(seconds) {
  if (seconds == null) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

function renderWatched() {
  const watched = [...client.watched.values()];
  $("#watch-count").textContent = watched.length ? `(${watched.length})` : "";
  $("#watched").replaceChildren(
    ...watched.map((user) => {
      const item = document.createElement("li");
      item.dataset.userId = user.id;
      item.dataset.online = String(user.online);
      item.dataset.status = user.status;
      const dot = document.createElement("span");
      dot.className = `dot ${user.status}`;
      dot.setAttribute("aria-hidden", "true");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = user.username ?? `#${user.id}`;
      const status = document.createElement("span");
      status.className = "state";
      const active = client.lastActive(user.id);
      status.textContent = user.online ? `${user.status}${active ? ` · active ${ago(active)}` : ""}` : "offline";
      item.append(dot, name, status);
      return item;
    }),
  );
}

function watchIds(ids) {
  sessionStorage.setItem(WATCH_KEY, JSON.stringify(ids));
  client.watch(ids);
  renderWatched();
}

client.on("watch", ({ event, user }) => {
  renderWatched();
  if (event !== "snapshot") addLog(`Watched: ${user.username ?? user.id} ${event === "status" ? `is ${user.status}` : `went ${event}`}`);
});
setInterval(renderWatched, 30000); // "active N min ago" ages

$("#watch").addEventListener("submit", (event) => {
  event.preventDefault();
  const ids = $("#watch-ids")
    .value.split(/[\s,]+/)
    .map(Number)
    .filter((id) => Number.isInteger(id) && id > 0);
  watchIds(ids);
});

// ---------------------------------------------------------------- rooms
function saveRooms() {
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify(client.rooms));
}

function renderRooms() {
  const list = $("#room-list");
  list.replaceChildren(
    ...client.rooms.map((room) => {
      const item = document.createElement("li");
      item.dataset.room = room;
      if (room === current) item.className = "current";
      const show = document.createElement("button");
      show.type = "button";
      show.className = "room-name";
      show.textContent = room;
      show.title = `Show ${room}`;
      show.addEventListener("click", () => select(room));
      const leave = document.createElement("button");
      leave.type = "button";
      leave.className = "leave";
      leave.textContent = "Leave";
      leave.setAttribute("aria-label", `Leave ${room}`);
      leave.addEventListener("click", () => leaveRoom(room));
      item.append(show, leave);
      return item;
    }),
  );
  $("#no-rooms").hidden = client.rooms.length > 0;
}

function select(room) {
  typingSignal?.stop();
  current = room;
  typingSignal = room ? client.typing(room) : null;
  renderRooms();
  renderMembers();
}

async function joinRoom(room) {
  if (client.rooms.includes(room)) {
    select(room);
    return;
  }
  const joining = client.join(room);
  saveRooms();
  select(room);
  try {
    await joining;
    addLog(`You joined ${room}`, "ok");
  } catch (err) {
    addLog(`Could not join ${room}: ${err.message}`, "bad");
    saveRooms();
    select(client.rooms.at(-1) ?? null);
  }
}

async function leaveRoom(room) {
  if (room === current) typingSignal?.stop();
  const leaving = client.leave(room);
  saveRooms();
  if (room === current) select(client.rooms.at(-1) ?? null);
  else renderRooms();
  typingNow.delete(room);
  try {
    await leaving;
    addLog(`You left ${room}`);
  } catch (err) {
    if (err.code !== "disconnected") addLog(`Leaving ${room}: ${err.message}`, "bad");
  }
}

$("#join").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("#room").value.trim();
  if (room) joinRoom(room);
});

$("#status").addEventListener("change", (event) => {
  client.setStatus(event.target.value).catch((err) => addLog(`Status: ${err.message}`, "bad"));
});

// ---------------------------------------------------------------- typing
$("#message").addEventListener("input", () => typingSignal?.keystroke());
$("#message").addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.target.value = "";
    typingSignal?.stop();
  }
});
$("#message").addEventListener("blur", () => typingSignal?.stop());

function clearTyping(room, userId) {
  const users = typingNow.get(room);
  const entry = users?.get(userId);
  if (!entry) return;
  clearTimeout(entry.timer);
  users.delete(userId);
  if (room === current) renderTyping();
}

client.on("chat.typing", ({ room, user, typing }) => {
  if (user.id === me) return;
  clearTyping(room, user.id);
  if (!typing) return;
  if (!typingNow.has(room)) typingNow.set(room, new Map());
  const timer = setTimeout(() => clearTyping(room, user.id), TYPING_SHOWN_FOR);
  typingNow.get(room).set(user.id, { username: user.username, timer });
  if (room === current) renderTyping();
});

function renderTyping() {
  const names = [...(typingNow.get(current)?.values() ?? [])].map((u) => u.username).sort();
  const text =
    names.length === 0
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
  $("#typing").textContent = text;
}

// ---------------------------------------------------------------- start
let saved = [];
try {
  saved = JSON.parse(sessionStorage.getItem(ROOMS_KEY) || "[]");
} catch {
  saved = [];
}
for (const room of Array.isArray(saved) ? saved : []) client.join(room).catch(() => {});
select(client.rooms.at(-1) ?? null);
let watching = [];
try {
  watching = JSON.parse(sessionStorage.getItem(WATCH_KEY) || "[]");
} catch {
  watching = [];
}
if (Array.isArray(watching) && watching.length) {
  $("#watch-ids").value = watching.join(", ");
  watchIds(watching);
}
renderOnline();
client.connect();
