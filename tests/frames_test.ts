/** The MAC table and the stream framing, on their own. */

import assert from "node:assert/strict";
import { SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import { StreamDecoder } from "../plugs/stream.ts";
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
  table.learn(macA, 0, sender("10.0.0.1", 4000), 0, 1000);
  const slot = table.lookup(macA, 0, 1005);
  assert.ok(slot >= 0);
  const peer = new SocketAddress(
    table.addresses.slice(slot * SOCKADDR_SIZE, (slot + 1) * SOCKADDR_SIZE),
  );
  assert.equal(peer.toString(), "10.0.0.1:4000");
  assert.equal(table.lookup(macB, 0, 1005), -1);
  assert.equal(table.lookup(macA, 0, 1011), -1);
  assert.equal(counters[Counter.tableExpiries], 1);
});

Deno.test("group addresses are never learned nor looked up", () => {
  const table = new MacTable(16, 10, newCounters());
  const group = new Uint8Array([0x01, 0, 0x5e, 0, 0, 1]);
  table.learn(group, 0, sender("10.0.0.1", 4000), 0, 1000);
  assert.equal(table.lookup(group, 0, 1000), -1);
  assert.equal(table.entries(1000).length, 0);
});

Deno.test("a goodbye forgets every MAC of that sender and no other", () => {
  const table = new MacTable(64, 100, newCounters());
  table.learn(macA, 0, sender("10.0.0.1", 4000), 0, 1000);
  table.learn(macB, 0, sender("10.0.0.2", 4000), 0, 1000);
  assert.equal(table.forget(sender("10.0.0.1", 4000), 0), 1);
  assert.equal(table.lookup(macA, 0, 1000), -1);
  assert.ok(table.lookup(macB, 0, 1000) >= 0);
});

Deno.test("the table never holds more entries than its size, whatever is claimed", () => {
  const counters = newCounters();
  const table = new MacTable(100, 100, counters);
  assert.equal(table.size, 128);
  const mac = new Uint8Array(6);
  for (let i = 0; i < 100_000; i++) {
    mac.set([0x02, (i >> 24) & 0xff, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, 7]);
    table.learn(mac, 0, sender("10.0.0.9", 1000 + (i % 50)), 0, 1000);
  }
  assert.ok(table.entries(1000).length <= 128);
  assert.ok(counters[Counter.tableEvictions] > 0);
});

function encode(frames: number[][]): Uint8Array {
  const parts: number[] = [];
  for (const frame of frames) parts.push(frame.length >> 8, frame.length & 0xff, ...frame);
  return new Uint8Array(parts);
}

function decodeInChunks(stream: Uint8Array, chunk: number) {
  const decoder = new StreamDecoder();
  const frames: number[][] = [];
  let errors = 0;
  for (let at = 0; at < stream.length; at += chunk) {
    const end = Math.min(at + chunk, stream.length);
    decoder.feed(stream, at, end, (frame) => {
      frames.push([...frame]);
      return true;
    }, () => errors++);
  }
  return { frames, errors };
}

Deno.test("stream frames survive any split between reads, even inside the length", () => {
  const frames = [Array(60).fill(1), Array(1514).fill(2), Array(15).fill(3)];
  const stream = encode(frames);
  for (const chunk of [1, 2, 3, 7, 61, 1000, stream.length]) {
    assert.deepEqual(decodeInChunks(stream, chunk).frames, frames, `chunk ${chunk}`);
  }
});

Deno.test("a zero length is skipped and an oversized length is a counted framing error", () => {
  const stream = new Uint8Array([0, 0, ...encode([[9, 9, 9]]), 0xff, 0xff, 1, 2]);
  const { frames, errors } = decodeInChunks(stream, stream.length);
  assert.deepEqual(frames, [[9, 9, 9]]);
  assert.equal(errors, 1);
});

Deno.test("a refused delivery keeps the frame for the next call", () => {
  const decoder = new StreamDecoder();
  const stream = encode([[1, 1], [2, 2]]);
  let accept = false;
  const got: number[][] = [];
  const deliver = (frame: Uint8Array) => accept && got.push([...frame]) > 0;
  let at = decoder.feed(stream, 0, stream.length, deliver, () => {});
  assert.equal(at, 0);
  accept = true;
  at = decoder.feed(stream, at, stream.length, deliver, () => {});
  assert.deepEqual(got, [[1, 1], [2, 2]]);
  assert.equal(at, stream.length);
});

Deno.test("random stream input never throws", () => {
  const decoder = new StreamDecoder();
  const data = new Uint8Array(4096);
  for (let round = 0; round < 500; round++) {
    crypto.getRandomValues(data);
    const end = Math.floor(Math.random() * data.length);
    decoder.feed(data, 0, end, () => true, () => {});
  }
});
