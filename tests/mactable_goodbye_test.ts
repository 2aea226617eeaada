/**
 * A goodbye costs what it forgets, not the table's size: at hashsize=1048576
 * a stream of goodbyes (anyone on an open network can send them) neither
 * scans the table nor disturbs forwarding.
 */

import assert from "node:assert/strict";
import { SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { MacTable } from "../plugs/_mactable.ts";
import { hostTest, Lan, VDENO } from "./_harness.ts";

function sender(host: string, port: number): Uint32Array {
  const names = new Uint8Array(SOCKADDR_SIZE);
  names.set(SocketAddress.parse(host, port)!.bytes);
  return new Uint32Array(names.buffer);
}

function mac(peer: number, i: number): Uint8Array {
  return new Uint8Array([0x02, peer, 0, 0, i >> 8, i & 0xff]);
}

const NOW = 1000;

/**
 * A table that learned 100 MACs of `a` and 100 of `b`, none in another's slot: the table's random
 * seed puts two of 200 MACs in one of its 2^20 slots about once in fifty tables, and the later
 * then takes the slot (an eviction, counted); such a table is made again.
 */
function tableOfTwo(a: Uint32Array, b: Uint32Array): MacTable {
  for (;;) {
    const counters = newCounters();
    const table = new MacTable(1 << 20, 100, counters);
    for (let i = 0; i < 100; i++) {
      table.setClock(NOW).learn(mac(1, i), 0, a, 0);
      table.setClock(NOW).learn(mac(2, i), 0, b, 0);
    }
    if (counters[Counter.tableEvictions] === 0) return table;
  }
}

Deno.test("at hashsize=1048576 a goodbye visits only the slots of the peer that said it", () => {
  const a = sender("10.0.0.1", 4000), b = sender("10.0.0.2", 4000);
  const table = tableOfTwo(a, b);
  assert.equal(table.peerCount, 2);
  // Goodbyes from addresses that own nothing: no slot is looked at.
  for (let port = 1; port <= 10_000; port++) {
    assert.equal(table.forget(sender("10.0.0.99", port), 0, NOW), 0);
  }
  assert.equal(table.forgetVisits, 0, "goodbyes from strangers cost no table scan");
  // A goodbye from a: its 100 MACs and nothing else.
  assert.equal(table.forget(a, 0, NOW), 100);
  assert.equal(table.forgetVisits, 100, "a goodbye visits the slots it forgets");
  for (let i = 0; i < 100; i++) {
    assert.equal(table.setClock(NOW).lookup(mac(1, i), 0), -1);
    assert.ok(table.setClock(NOW).lookup(mac(2, i), 0) >= 0, "b's MACs are still forwarded to b");
  }
  assert.equal(table.peerCount, 1);
  // The same goodbye again finds nothing.
  assert.equal(table.forget(a, 0, NOW), 0);
  assert.equal(table.forgetVisits, 100);
});

Deno.test("a MAC that moves to another peer is forgotten with its new peer, not its old one", () => {
  const table = new MacTable(1 << 20, 100, newCounters());
  const a = sender("10.0.0.1", 4000), b = sender("10.0.0.2", 4000);
  table.setClock(NOW).learn(mac(1, 1), 0, a, 0);
  table.setClock(NOW).learn(mac(1, 2), 0, a, 0);
  table.setClock(NOW + 1).learn(mac(1, 1), 0, b, 0);
  assert.equal(table.forget(a, 0, NOW + 1), 1);
  assert.ok(table.setClock(NOW + 1).lookup(mac(1, 1), 0) >= 0, "the moved MAC stays, at b");
  assert.equal(table.forget(b, 0, NOW + 1), 1);
  assert.equal(table.setClock(NOW + 1).lookup(mac(1, 1), 0), -1);
  assert.equal(table.peerCount, 0);
  // Learned again after the goodbye: the peer's list starts afresh.
  table.setClock(NOW + 2).learn(mac(1, 1), 0, a, 0);
  assert.equal(table.forget(a, 0, NOW + 2), 1);
});

Deno.test("the peers a table tracks are bounded by its slots, whatever senders claim", () => {
  const table = new MacTable(16, 100, newCounters());
  for (let port = 1; port <= 5000; port++) {
    table.setClock(NOW).learn(mac(port >> 8, port & 0xff), 0, sender("10.0.0.9", port), 0);
    assert.ok(table.peerCount <= 16, `${table.peerCount} peers for 16 slots`);
  }
  const live = table.entries(NOW).length;
  let forgotten = 0;
  for (let port = 1; port <= 5000; port++) {
    forgotten += table.forget(sender("10.0.0.9", port), 0, NOW);
  }
  assert.equal(forgotten, live, "each live entry was forgotten by its own sender's goodbye");
  assert.equal(table.entries(NOW).length, 0);
  assert.equal(table.peerCount, 0);
});

hostTest(
  "at hashsize=1048576 a flood of goodbyes does not disturb forwarding",
  ["ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, attacker] = lan.hosts;
    const vnl = "vxvde://239.8.0.8/hashsize=1048576";
    a.vdeno(["plug", "--name", `goodbyes-${Deno.pid}`, "tap://tap0", vnl]);
    b.vdeno(["plug", "tap://tap0", vnl]);
    for (const [i, host] of [a, b].entries()) {
      await host.waitForLink("tap0");
      await host.configure("tap0", `10.0.0.${i + 1}/24`, `02:00:00:00:00:0${i + 1}`);
    }
    assert.ok(await a.pingable("10.0.0.2", 30_000), "a reaches b before the flood");
    const status = async () =>
      JSON.parse(await a.sh([...VDENO, "status", "--json", `goodbyes-${Deno.pid}`])).plugs[1];
    const before = await status();
    const pinging = a.run(["ping", "-c", "40", "-i", "0.05", "10.0.0.2"], { timeoutMs: 60_000 });
    const sender = new URL("./fixtures/junk_sender.ts", import.meta.url).pathname;
    const flood = (target: string, port: number) =>
      attacker.sh(
        [
          Deno.execPath(),
          "run",
          "-A",
          "--quiet",
          sender,
          target,
          String(port),
          "1",
          "20000",
          "goodbye",
        ],
        120_000,
      );
    await flood("239.8.0.8", 14789);
    await flood(a.address, before.unicastPort);
    const ping = await pinging;
    const after = await status();
    // The kernel may drop some of a burst this size before the plug reads it; every one read
    // would have cost a scan of the whole table (milliseconds) before.
    const goodbyes = after.counters.goodbyesReceived - before.counters.goodbyesReceived;
    assert.ok(goodbyes >= 10_000, `${goodbyes} goodbyes reached the plug`);
    assert.match(ping.stdout, / 0% packet loss/, ping.stdout);
    const learned = after.learned.map((entry: { mac: string }) => entry.mac);
    assert.ok(learned.includes("02:00:00:00:00:02"), "b's MAC is still known: it said no goodbye");
  },
);
