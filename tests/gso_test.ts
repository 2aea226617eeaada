/**
 * DatagramVector's UDP GSO messages, on the loopback: a run of datagrams sent
 * as one message arrives as the same separate datagrams, and a kernel that
 * refuses GSO is noticed and counted, not fatal.
 */

import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import {
  AF_INET,
  bindSocket,
  DatagramVector,
  localAddress,
  numericAddress,
  SOCKADDR_SIZE,
  SocketAddress,
  udpSocket,
} from "../ffi/net.ts";

const SLOT = 2048;
const SLOTS = 16;

/** Sender and receiver sockets on 127.0.0.1, and a vector over 16 slots. */
function loopbackPair() {
  const receiver = udpSocket(AF_INET);
  bindSocket(receiver, SocketAddress.parse("127.0.0.1", 0)!);
  const sender = udpSocket(AF_INET);
  bindSocket(sender, SocketAddress.parse("127.0.0.1", 0)!);
  const slots = new Uint8Array(SLOT * SLOTS);
  const name = new Uint8Array(SOCKADDR_SIZE);
  name.set(localAddress(receiver).bytes);
  return {
    receiver,
    sender,
    slots,
    vector: new DatagramVector(slots, SLOT, 0, SLOTS),
    name,
    close() {
      libc.close(receiver);
      libc.close(sender);
    },
  };
}

/** Receives everything queued on `fd` into a fresh vector; returns the datagrams. */
function drain(fd: number): Uint8Array[] {
  const slots = new Uint8Array(SLOT * 64);
  const vector = new DatagramVector(slots, SLOT, 0, 64);
  const received = vector.receiveInto(fd, 0, 64, SLOT);
  assert.ok(received >= 0, `recvmmsg failed: errno ${-received}`);
  return Array.from(
    { length: received },
    (_, i) => slots.slice(i * SLOT, i * SLOT + vector.length(i)),
  );
}

Deno.test("a run sent as one UDP GSO message arrives as the same separate datagrams", () => {
  const pair = loopbackPair();
  try {
    // Slots 1..10: nine datagrams of 300 bytes and a last one of 120, then one alone.
    const lengths = [300, 300, 300, 300, 300, 300, 300, 300, 300, 120];
    lengths.forEach((length, k) => {
      for (let b = 0; b < length; b++) pair.slots[(k + 1) * SLOT + b] = (k * 31 + b) & 0xff;
      pair.vector.aimDatagram(k, k + 1, length);
    });
    pair.slots.fill(0xee, 12 * SLOT, 12 * SLOT + 77);
    pair.vector.aimDatagram(10, 12, 77);
    const name = numericAddress(pair.name);
    pair.vector.prepareMessage(0, 0, 10, 300, name, 16);
    pair.vector.prepareMessage(1, 10, 1, 77, name, 16);
    assert.equal(pair.vector.sendAll(pair.sender, 2), 0);
    assert.equal(pair.vector.segmentationRefused, false);

    const datagrams = drain(pair.receiver);
    assert.deepEqual(datagrams.map((d) => d.length), [...lengths, 77]);
    datagrams.slice(0, 10).forEach((datagram, k) => {
      assert.deepEqual(datagram, pair.slots.slice((k + 1) * SLOT, (k + 1) * SLOT + lengths[k]));
    });
    assert.ok(datagrams[10].every((byte) => byte === 0xee));

    // The same vector receives again into its own slots, each entry one datagram.
    pair.slots.fill(0);
    const again = new Uint8Array(500).fill(7);
    for (let n = 0; n < 3; n++) {
      libc.sendto(
        pair.sender,
        Deno.UnsafePointer.of(again),
        BigInt(100 + n),
        0,
        Deno.UnsafePointer.of(pair.name),
        16,
      );
    }
    assert.equal(pair.vector.receiveInto(pair.receiver, 0, SLOTS, SLOT), 3);
    for (let n = 0; n < 3; n++) {
      assert.equal(pair.vector.length(n), 100 + n);
      assert.equal(pair.slots[n * SLOT + 99 + n], 7, `datagram ${n} in slot ${n}`);
      assert.equal(pair.slots[n * SLOT + 100 + n], 0);
    }
  } finally {
    pair.close();
  }
});

Deno.test("a kernel refusing GSO is noticed; every datagram of the message counts as failed", () => {
  const pair = loopbackPair();
  try {
    // UDP GSO needs UDP checksums: without them (SO_NO_CHECK) the kernel says EINVAL.
    const SOL_SOCKET = 1, SO_NO_CHECK = 11;
    const one = new Uint8Array([1, 0, 0, 0]);
    assert.equal(libc.setsockopt(pair.sender, SOL_SOCKET, SO_NO_CHECK, one, 4), 0);
    for (let k = 0; k < 4; k++) pair.vector.aimDatagram(k, k, 200);
    pair.vector.prepareMessage(0, 0, 4, 200, numericAddress(pair.name), 16);
    assert.equal(pair.vector.sendAll(pair.sender, 1), 4);
    assert.equal(pair.vector.segmentationRefused, true);
    assert.equal(drain(pair.receiver).length, 0);
    // One datagram per message still goes.
    pair.vector.prepare(0, 0, 200, numericAddress(pair.name), 16);
    assert.equal(pair.vector.sendAll(pair.sender, 1), 0);
    assert.equal(drain(pair.receiver).length, 1);
  } finally {
    pair.close();
  }
});

Deno.test("a frame's datagrams that fail count once, per destination", () => {
  const pair = loopbackPair();
  try {
    // Port 0: the kernel refuses every datagram with EINVAL. Two such destinations.
    const nowhere = new Uint8Array(2 * SOCKADDR_SIZE);
    nowhere.set(SocketAddress.parse("127.0.0.1", 0)!.bytes.subarray(0, SOCKADDR_SIZE));
    nowhere.set(SocketAddress.parse("127.0.0.2", 0)!.bytes.subarray(0, SOCKADDR_SIZE), 16);
    const first = numericAddress(nowhere), second = first + SOCKADDR_SIZE;
    const receiver = numericAddress(pair.name);
    const vector = pair.vector;
    // Slot 0 whole to the receiver; slot 1 in three pieces and slot 2 in two, a message each.
    vector.aimDatagram(0, 0, 100);
    for (let k = 0; k < 3; k++) vector.aimDatagram(1 + k, 1, 100, 0, 0, k * 200);
    for (let k = 0; k < 2; k++) vector.aimDatagram(4 + k, 2, 100, 0, 0, k * 200);
    vector.prepareMessage(0, 0, 1, 100, receiver, 16);
    for (let j = 1; j < 6; j++) vector.prepareMessage(j, j, 1, 100, first, 16);
    assert.equal(vector.sendAll(pair.sender, 6), 2, "two frames failed");
    assert.equal(drain(pair.receiver).length, 1);
    // Slot 2's pieces to both destinations (a flood's copies): a frame lost to each.
    vector.prepareMessage(0, 4, 1, 100, first, 16);
    vector.prepareMessage(1, 5, 1, 100, first, 16);
    vector.prepareMessage(2, 4, 1, 100, second, 16);
    vector.prepareMessage(3, 5, 1, 100, second, 16);
    assert.equal(vector.sendAll(pair.sender, 4), 2, "one frame to each of two destinations");
    // Two frames' pieces in one GSO message: two frames.
    for (let k = 0; k < 4; k++) vector.aimDatagram(k, 3 + (k >> 1), 100, 0, 0, (k & 1) * 200);
    vector.prepareMessage(0, 0, 4, 100, first, 16);
    assert.equal(vector.sendAll(pair.sender, 1), 2, "two frames in one message");
  } finally {
    pair.close();
  }
});
