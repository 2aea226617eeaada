/** plugs/_mactable.ts: the forwarding table of a vxvde plug. */

import assert from "node:assert/strict";
import { SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { MacTable } from "../plugs/_mactable.ts";

function sender(host: string, port: number): Uint32Array {
  const names = new Uint8Array(SOCKADDR_SIZE);
  names.set(SocketAddress.parse(host, port)!.bytes);
  return new Uint32Array(names.buffer);
}

const macA = new Uint8Array([0x02, 0, 0, 0, 0, 0xa]);
const macB = new Uint8Array([0x02, 0, 0, 0, 0, 0xb]);

Deno.test("a learned MAC is found until it expires", () => {
  const counters = newCounters();
  const table = new MacTable(16, 10, counters);
  table.setClock(1000).learn(macA, 0, sender("10.0.0.1", 4000), 0);
  const slot = table.setClock(1005).lookup(macA, 0);
  assert.ok(slot >= 0);
  const peer = new SocketAddress(
    table.addresses.slice(slot * SOCKADDR_SIZE, (slot + 1) * SOCKADDR_SIZE),
  );
  assert.equal(peer.toString(), "10.0.0.1:4000");
  assert.equal(table.setClock(1005).lookup(macB, 0), -1);
  assert.equal(table.setClock(1011).lookup(macA, 0), -1);
  assert.equal(counters[Counter.tableExpiries], 1);
});

Deno.test("group addresses are never learned nor looked up", () => {
  const table = new MacTable(16, 10, newCounters());
  const group = new Uint8Array([0x01, 0, 0x5e, 0, 0, 1]);
  table.setClock(1000).learn(group, 0, sender("10.0.0.1", 4000), 0);
  assert.equal(table.setClock(1000).lookup(group, 0), -1);
  assert.equal(table.entries(1000).length, 0);
});

Deno.test("a goodbye forgets every MAC of that sender and no other", () => {
  // The random seed puts macA and macB in one of the 64 slots about once in 64 tables, and macB
  // then takes it (an eviction, counted): such a table is made again.
  let table: MacTable;
  for (;;) {
    const counters = newCounters();
    table = new MacTable(64, 100, counters);
    table.setClock(1000).learn(macA, 0, sender("10.0.0.1", 4000), 0);
    table.setClock(1000).learn(macB, 0, sender("10.0.0.2", 4000), 0);
    if (counters[Counter.tableEvictions] === 0) break;
  }
  assert.equal(table.forget(sender("10.0.0.1", 4000), 0), 1);
  assert.equal(table.setClock(1000).lookup(macA, 0), -1);
  assert.ok(table.setClock(1000).lookup(macB, 0) >= 0);
});

Deno.test("a flood of new MACs fills every slot and no more, and the table still learns", () => {
  const counters = newCounters();
  const table = new MacTable(100, 100, counters);
  assert.equal(table.size, 128);
  const bytesBefore = table.addresses.length;
  const mac = new Uint8Array(6);
  const claimed = new Set<number>();
  const FLOOD = 100_000;
  for (let i = 0; i < FLOOD; i++) {
    mac.set([0x02, (i >> 24) & 0xff, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, 7]);
    claimed.add(mac.reduce((value, byte) => value * 256 + byte, 0));
    table.setClock(1000).learn(mac, 0, sender("10.0.0.9", 1000 + (i % 50)), 0);
  }
  const entries = table.entries(1000);
  // Far more MACs than slots: every slot holds one, each a MAC that was claimed.
  assert.equal(entries.length, table.size);
  assert.equal(new Set(entries.map((entry) => entry.slot)).size, table.size);
  assert.ok(entries.every((entry) => claimed.has(entry.mac)));
  assert.equal(table.addresses.length, bytesBefore, "no memory grows");
  assert.equal(counters[Counter.learned], FLOOD);
  assert.equal(counters[Counter.tableEvictions], FLOOD - table.size);
  table.setClock(1001).learn(macA, 0, sender("10.0.0.1", 4000), 0);
  assert.equal(table.peerOf(table.setClock(1001).lookup(macA, 0)), "10.0.0.1:4000");
});
