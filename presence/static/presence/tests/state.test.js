// The pure parts: positions, diff decisions, member maps, backoff, close decisions, throttle.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  applyDiff,
  applySnapshot,
  closeDecision,
  comparePos,
  diffAction,
  fullJitter,
  throttle,
} from "../presence.js";

const alice = { id: 1, username: "alice", status: "online", connections: 1 };
const bob = { id: 2, username: "bob", status: "online", connections: 2 };

describe("comparePos", () => {
  it("compares as integer pairs, not strings", () => {
    assert.ok(comparePos("9-0", "10-0") < 0); // as strings "9-0" > "10-0"
    assert.ok(comparePos("10-10", "10-9") > 0);
    assert.equal(comparePos("10-1", "10-1"), 0);
  });

  it("puts null before everything", () => {
    assert.ok(comparePos(null, "1-0") < 0);
    assert.ok(comparePos("1-0", null) > 0);
    assert.equal(comparePos(null, null), 0);
  });
});

describe("diffAction", () => {
  it("applies a diff that continues from the position", () => {
    assert.equal(diffAction("100-0", { seq: "105-0", prev: "100-0" }), "apply");
    assert.equal(diffAction("100-0", { seq: "105-0", prev: "90-0" }), "apply"); // an earlier prev
  });

  it("ignores what the snapshot already holds", () => {
    assert.equal(diffAction("100-0", { seq: "100-0", prev: "90-0" }), "ignore");
    assert.equal(diffAction("100-0", { seq: "99-5", prev: "90-0" }), "ignore");
  });

  it("ignores everything while there is no snapshot", () => {
    assert.equal(diffAction(null, { seq: "105-0", prev: "100-0" }), "ignore");
  });

  it("reports a gap when prev is after the position", () => {
    assert.equal(diffAction("100-0", { seq: "120-0", prev: "110-0" }), "gap");
  });
});

describe("applySnapshot", () => {
  it("replaces the map in place and reports the differences", () => {
    const members = new Map([[1, { ...alice }]]);
    const same = members;

    const changes = applySnapshot(members, [{ ...alice, status: "away" }, bob]);

    assert.equal(members, same);
    assert.deepEqual([...members.keys()], [1, 2]);
    assert.deepEqual(changes.joins, [bob]);
    assert.deepEqual(changes.statuses, [{ ...alice, status: "away" }]);
    assert.deepEqual(changes.leaves, []);

    const gone = applySnapshot(members, [bob]);
    assert.deepEqual(gone.leaves, [{ ...alice, status: "offline" }]);
    assert.deepEqual([...members.keys()], [2]);
  });
});

describe("applyDiff", () => {
  it("adds joins, updates statuses, removes leaves", () => {
    const members = new Map([[1, { ...alice }]]);

    const changes = applyDiff(members, {
      join: [{ id: 2, username: "bob", status: "online" }],
      status: [{ id: 1, username: "alice", status: "busy" }],
      leave: [],
    });

    assert.equal(members.get(1).status, "busy");
    assert.equal(members.get(1).connections, 1); // kept from the snapshot
    assert.equal(members.get(2).username, "bob");
    assert.deepEqual(changes.joins.map((u) => u.id), [2]);
    assert.deepEqual(changes.statuses.map((u) => u.id), [1]);

    const left = applyDiff(members, { leave: [{ id: 2, username: "bob", status: "offline" }] });
    assert.deepEqual(left.leaves.map((u) => u.id), [2]);
    assert.equal(members.has(2), false);
  });

  it("does not report the leave of someone it never had", () => {
    const changes = applyDiff(new Map(), { leave: [{ id: 9, username: "x", status: "offline" }] });
    assert.deepEqual(changes.leaves, []);
  });
});

describe("fullJitter", () => {
  it("draws from [0, base·2^attempt) and caps the window at 30 s", () => {
    const top = fullJitter({ random: () => 0.999999 });
    assert.ok(Math.abs(top(0) - 1000) < 1);
    assert.ok(Math.abs(top(3) - 8000) < 1);
    assert.ok(Math.abs(top(5) - 30000) < 1); // 32 s capped
    assert.ok(Math.abs(top(100) - 30000) < 1);
    assert.equal(fullJitter({ random: () => 0 })(7), 0);
  });

  it("spreads clients over the window", () => {
    const backoff = fullJitter();
    const delays = Array.from({ length: 200 }, () => backoff(4));
    assert.ok(delays.every((d) => d >= 0 && d < 16000));
    assert.ok(new Set(delays.map((d) => Math.floor(d / 1000))).size > 10);
  });
});

describe("closeDecision", () => {
  for (const [code, decision] of [
    [4401, "unauthorized"],
    [4403, "stop"],
    [4410, "stop"],
    [4429, "slow"],
    [4408, "reconnect"],
    [1012, "reconnect"],
    [1013, "reconnect"],
    [1006, "reconnect"],
    [1001, "reconnect"],
  ]) {
    it(`${code} → ${decision}`, () => assert.equal(closeDecision(code), decision));
  }
});

describe("throttle", () => {
  it("lets one call through per window", () => {
    let t = 0;
    const calls = [];
    const throttled = throttle((x) => calls.push(x), 1000, { now: () => t });

    assert.equal(throttled("a"), true);
    t = 500;
    assert.equal(throttled("b"), false);
    t = 1000;
    assert.equal(throttled("c"), true);
    assert.deepEqual(calls, ["a", "c"]);
  });
});
