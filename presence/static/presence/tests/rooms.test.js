// Rooms and member lists over the socket: join/leave, diffs, gaps, presence.state, rejoin.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { FakeWebSocket, connected, flush, makeClient } from "./fakes.js";

const alice = { id: 1, username: "alice", status: "online", connections: 1 };
const bob = { id: 2, username: "bob", status: "online", connections: 1 };
const carol = { id: 3, username: "carol", status: "online", connections: 1 };
const ids = (map) => [...map.keys()].sort();
const named = (events, name) => events.filter(([n]) => n === name).map(([, d]) => d);

async function inLobby(users = [alice], seq = "100-0") {
  const made = await connected();
  const joined = made.client.join("lobby");
  made.ws().reply("room.join", { users, seq, count: users.length, complete: true });
  const members = await joined;
  return { ...made, members };
}

describe("join and leave", () => {
  it("join resolves with the live member map of the snapshot", async () => {
    const { client, ws, members } = await inLobby([alice, bob]);
    assert.deepEqual(ws().lastSent("room.join").data, { room: "lobby" });
    assert.deepEqual(ids(members), [1, 2]);
    assert.equal(client.members("lobby"), members);
    assert.deepEqual(client.rooms, ["lobby"]);
  });

  it("join before connecting is sent after hello", async () => {
    const { client, ws } = await makeClient({ global: false });
    const joined = client.join("lobby");
    client.connect();
    await flush();
    assert.deepEqual(ws().sent, []);
    ws().hello();
    ws().reply("room.join", { users: [alice], seq: "1-0", count: 1, complete: true });
    assert.deepEqual(ids(await joined), [1]);
  });

  it("an invalid room is refused without a frame", async () => {
    const { client, ws } = await connected();
    await assert.rejects(client.join("no spaces"), { code: "invalid_payload" });
    assert.equal(ws().lastSent("room.join"), undefined);
  });

  it("a join the server refuses rejects and is not retried", async () => {
    const { client, ws, clock } = await connected();
    const joined = client.join("r51");
    ws().reply("room.join", null, { error: { code: "limit_exceeded", message: "at most 50 rooms" } });
    await assert.rejects(joined, { code: "limit_exceeded" });
    assert.deepEqual(client.rooms, []);
    ws().serverClose(1012);
    await clock.tick(client.lastClose.delay);
    ws().hello();
    assert.equal(ws().lastSent("room.join"), undefined);
  });

  it("leave sends room.leave, empties the map and stops rejoining", async () => {
    const { client, ws, members, events, clock } = await inLobby([alice, bob]);
    const left = client.leave("lobby");
    assert.deepEqual(ws().lastSent("room.leave").data, { room: "lobby" });
    ws().reply("room.leave", { room: "lobby" });
    await left;
    assert.equal(members.size, 0);
    assert.deepEqual(client.rooms, []);
    assert.deepEqual(named(events, "leave").map((d) => d.user.id).sort(), [1, 2]);

    ws().serverClose(1012);
    await clock.tick(client.lastClose.delay);
    ws().hello();
    assert.equal(ws().lastSent("room.join"), undefined);
  });
});

describe("diffs", () => {
  it("applies joins, statuses and leaves in order, with events", async () => {
    const { ws, members, events } = await inLobby([alice]);
    ws().receive({ type: "presence.diff", room: "lobby", seq: "110-0", prev: "90-0", join: [bob], leave: [], status: [] });
    ws().receive({
      type: "presence.diff", room: "lobby", seq: "120-0", prev: "110-0",
      join: [], leave: [], status: [{ ...bob, status: "busy" }],
    });
    ws().receive({
      type: "presence.diff", room: "lobby", seq: "130-0", prev: "120-0",
      join: [], leave: [{ ...bob, status: "offline" }], status: [],
    });

    assert.deepEqual(ids(members), [1]);
    const diffEvents = events.filter(([n, d]) => ["join", "status", "leave"].includes(n) && !d.snapshot);
    assert.deepEqual(
      diffEvents.map(([n, d]) => [n, d.room, d.user.username, d.user.status]),
      [
        ["join", "lobby", "bob", "online"],
        ["status", "lobby", "bob", "busy"],
        ["leave", "lobby", "bob", "offline"],
      ],
    );
  });

  it("ignores a diff the snapshot already holds", async () => {
    const { ws, members } = await inLobby([alice], "100-0");
    ws().receive({ type: "presence.diff", room: "lobby", seq: "100-0", prev: "90-0", join: [bob], leave: [], status: [] });
    assert.deepEqual(ids(members), [1]);
  });

  it("a gap (prev after the position) resyncs the scope and replaces the list", async () => {
    const { ws, members, events } = await inLobby([alice], "100-0");
    ws().receive({ type: "presence.diff", room: "lobby", seq: "300-0", prev: "200-0", join: [carol], leave: [], status: [] });

    assert.equal(members.has(3), false, "a diff after a gap is not applied");
    assert.deepEqual(ws().lastSent("presence.sync").data, { room: "lobby" });
    assert.equal(named(events, "gap").length, 1);
    // Diffs that arrive while the snapshot is on its way are covered by it.
    ws().receive({ type: "presence.diff", room: "lobby", seq: "310-0", prev: "300-0", join: [bob], leave: [], status: [] });
    assert.equal(members.has(2), false);

    ws().reply("presence.sync", { users: [alice, bob, carol], seq: "310-0", count: 3, complete: true });
    await flush();
    assert.deepEqual(ids(members), [1, 2, 3]);
    ws().receive({ type: "presence.diff", room: "lobby", seq: "320-0", prev: "310-0", join: [], leave: [carol], status: [] });
    assert.deepEqual(ids(members), [1, 2]);
  });

  it("the global scope has its own position and gap check", async () => {
    const { client, ws } = await connected({}, { users: [alice], seq: "50-0" });
    ws().receive({ type: "presence.diff", room: null, seq: "60-0", prev: "40-0", join: [bob], leave: [], status: [] });
    assert.deepEqual(ids(client.members()), [1, 2]);
    ws().receive({ type: "presence.diff", room: null, seq: "80-0", prev: "70-0", join: [carol], leave: [], status: [] });
    assert.deepEqual(ws().lastSent("presence.sync").data, { room: null });
    assert.equal(ws().sent.filter((f) => f.type === "presence.sync").length, 2);
  });

  it("presence.state replaces a scope's list and position", async () => {
    const { ws, members } = await inLobby([alice, bob], "100-0");
    ws().receive({ type: "presence.state", room: "lobby", seq: "500-0", count: 1, users: [carol], complete: true });
    assert.deepEqual(ids(members), [3]);
    ws().receive({ type: "presence.diff", room: "lobby", seq: "400-0", prev: "300-0", join: [bob], leave: [], status: [] });
    assert.deepEqual(ids(members), [3], "older than the new position");
    ws().receive({ type: "presence.diff", room: "lobby", seq: "510-0", prev: "500-0", join: [bob], leave: [], status: [] });
    assert.deepEqual(ids(members), [2, 3]);
  });

  it("diffs of a room not joined are ignored", async () => {
    const { client, ws } = await connected();
    ws().receive({ type: "presence.diff", room: "other", seq: "9-0", prev: "1-0", join: [bob], leave: [], status: [] });
    assert.equal(client.members("other").size, 0);
  });
});

describe("after a reconnect", () => {
  it("rejoins every room, resyncs, and reports only the real changes", async () => {
    const { client, ws, members, clock, events } = await inLobby([alice, bob], "100-0");
    client.join("second");
    ws().reply("room.join", { users: [alice], seq: "101-0", count: 1, complete: true });
    await flush();
    ws().serverClose(1006);
    // Diffs of the dead connection's positions are meaningless now.
    await clock.tick(client.lastClose.delay);
    const second = ws();
    second.hello();

    assert.deepEqual(
      second.sent.map((f) => [f.type, f.data?.room ?? null]),
      [["presence.sync", null], ["room.join", "lobby"], ["room.join", "second"]],
    );
    const before = events.length;
    const reply = second.sent.find((f) => f.type === "room.join" && f.data.room === "lobby");
    second.receive({ type: "reply", id: reply.id, data: { users: [alice, carol], seq: "900-0", count: 2, complete: true } });
    await flush();
    assert.deepEqual(ids(members), [1, 3]);
    assert.deepEqual(
      events.slice(before).filter(([n]) => n === "join" || n === "leave").map(([n, d]) => [n, d.user.id]),
      [["join", 3], ["leave", 2]],
    );
  });

  it("a diff between the close and the new snapshot is ignored", async () => {
    const { client, ws, members, clock } = await inLobby([alice], "100-0");
    ws().serverClose(1012);
    await clock.tick(client.lastClose.delay);
    ws().hello();
    ws().receive({ type: "presence.diff", room: "lobby", seq: "200-0", prev: "100-0", join: [bob], leave: [], status: [] });
    assert.deepEqual(ids(members), [1]);
  });

  it("sends the chosen status again when it is not online", async () => {
    const { client, ws, clock } = await connected();
    const set = client.setStatus("busy");
    ws().reply("status.set", { status: "busy" });
    await set;
    ws().serverClose(1012);
    await clock.tick(client.lastClose.delay);
    ws().hello();
    assert.deepEqual(ws().lastSent("status.set").data, { status: "busy" });
  });

  it("frames of a replaced socket are ignored", async () => {
    const { client, ws, clock } = await inLobby([alice], "100-0");
    const old = ws();
    old.serverClose(1006);
    await clock.tick(client.lastClose.delay);
    old.receive({ type: "presence.state", room: "lobby", seq: "999-0", count: 0, users: [], complete: true });
    assert.equal(client.members("lobby").size, 1);
    assert.equal(FakeWebSocket.instances.length, 2);
  });
});
