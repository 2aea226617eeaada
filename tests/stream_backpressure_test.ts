/**
 * A stream plug writing to a pipe whose reader is slow or stopped: writes
 * never block, frames that do not fit are dropped whole and counted, and a
 * frame the pipe took only part of is finished before the next one, so the
 * reader never sees the stream out of step. Real pipes, no root needed.
 */

import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import { pipe } from "../ffi/spawn.ts";
import { Counter } from "../core/counters.ts";
import { FrameBatch } from "../core/frames.ts";
import { StreamDecoder, StreamPlug } from "../plugs/stream.ts";

function frameOf(sequence: number, length: number): Uint8Array {
  const frame = new Uint8Array(length);
  frame.fill(0xff, 0, 6);
  frame.set([0x02, 0, 0, 0, 0, 1, 0x88, 0xb5], 6);
  new DataView(frame.buffer).setUint32(14, sequence);
  for (let i = 18; i < length; i++) frame[i] = (sequence + i) & 0xff;
  return frame;
}

function readSome(fd: number, max: number): Uint8Array {
  const buffer = new Uint8Array(max);
  const count = libc.read(fd, Deno.UnsafePointer.of(buffer), BigInt(max));
  return count > 0 ? buffer.slice(0, count) : new Uint8Array(0);
}

Deno.test("a slow stream reader gets whole frames only; what did not fit is dropped and counted", () => {
  const input = pipe(), output = pipe();
  const plug = new StreamPlug("test", input.read, output.write, true);
  const decoder = new StreamDecoder();
  const received: Uint8Array[] = [];
  let malformed = 0;
  const drain = (max: number) => {
    const bytes = readSome(output.read, max);
    decoder.feed(bytes, 0, bytes.length, (frame) => {
      received.push(frame.slice());
      return true;
    }, () => malformed++);
    return bytes.length;
  };
  // Make the reader's end non-blocking so the test can drain it without waiting.
  libc.fcntl(output.read, 4, 0o4000);
  try {
    const batch = new FrameBatch();
    let sequence = 0, partial = 0;
    for (let round = 0; round < 200; round++) {
      batch.count = 0;
      // Odd sizes, so that the pipe's room runs out in the middle of frames.
      for (let i = 0; i < 16; i++) batch.push(frameOf(sequence++, 60 + ((sequence * 997) % 1400)));
      plug.send(batch); // Never blocks: the test would hang here otherwise.
      if (plug.pendingOutput) partial++;
      plug.flush();
      drain(round % 3 === 0 ? 3001 : 7); // A reader slower than the writer, in odd bites.
    }
    while (plug.pendingOutput) {
      plug.flush();
      drain(1 << 16);
    }
    while (drain(1 << 16) > 0) { /* the rest */ }
    const sent = plug.counters[Counter.framesOut], dropped = plug.counters[Counter.dropQueueFull];
    assert.equal(sent + dropped, sequence, "every frame went out or was counted as dropped");
    assert.ok(dropped > 0, "the slow reader cost frames");
    assert.ok(partial > 0, "the pipe took part of a frame at times");
    assert.equal(malformed, 0, "the stream never went out of step");
    assert.equal(received.length, sent, "every frame counted as sent arrived");
    let last = -1;
    for (const frame of received) {
      const number = new DataView(frame.buffer).getUint32(14);
      assert.ok(number > last, "in order");
      last = number;
      assert.deepEqual(frame, frameOf(number, frame.length), `frame ${number} arrived whole`);
    }
  } finally {
    plug.close();
    libc.close(input.write);
    libc.close(output.read);
  }
});
