/** plugs/stream.ts: frames on a byte stream, as vde_plug writes them. */

import assert from "node:assert/strict";
import { closeQuietly, libc } from "../ffi/libc.ts";
import { pipe } from "../ffi/spawn.ts";
import { runCable } from "../core/cable.ts";
import { Counter } from "../core/counters.ts";
import { MAX_FRAME } from "../core/frames.ts";
import { MAX_STREAM_FRAME, StreamDecoder, StreamPlug } from "../plugs/stream.ts";
import { type Host, hostTest, Lan, VDENO, waitUntil } from "./_harness.ts";
import { MemoryPlug, numberedFrame, sequenceOf } from "./_memory_plug.ts";

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

/**
 * The framing rule written as plainly as possible, byte by byte, to check the
 * decoder against: a zero length is skipped, a length above the limit drops
 * the rest of its chunk, any other length is a frame.
 */
function referenceDecode(chunks: Uint8Array[]) {
  const frames: number[][] = [];
  let errors = 0;
  let pending: number[] = [];
  for (const chunk of chunks) {
    for (const byte of chunk) {
      pending.push(byte);
      if (pending.length < 2) continue;
      const length = (pending[0] << 8) | pending[1];
      if (length === 0) {
        pending = [];
      } else if (length > MAX_STREAM_FRAME) {
        errors++;
        pending = [];
        break;
      } else if (pending.length === 2 + length) {
        frames.push(pending.slice(2));
        pending = [];
      }
    }
  }
  return { frames, errors };
}

/** A stream of frames, zero lengths, lengths over the limit and garbage, cut in random chunks. */
function randomChunks(random: () => number): Uint8Array[] {
  const parts: number[] = [];
  for (let piece = 0; piece < 40; piece++) {
    const kind = random();
    if (kind < 0.6) {
      const length = 1 + Math.floor(random() * 2000);
      parts.push(length >> 8, length & 0xff);
      for (let i = 0; i < length; i++) parts.push(Math.floor(random() * 256));
    } else if (kind < 0.7) {
      parts.push(0, 0);
    } else if (kind < 0.8) {
      const length = MAX_STREAM_FRAME + 1 + Math.floor(random() * 1000);
      parts.push(length >> 8, length & 0xff);
    } else {
      for (let i = Math.floor(random() * 8); i > 0; i--) parts.push(Math.floor(random() * 256));
    }
  }
  const stream = new Uint8Array(parts);
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < stream.length;) {
    const size = 1 + Math.floor(random() * 3000);
    chunks.push(stream.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

Deno.test("on random input the decoder finds the frames and errors the plain framing rule finds", () => {
  let state = 0x9e3779b9;
  const random = () => {
    // xorshift32: the same rounds on every run, so a failure repeats.
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  let framesSeen = 0, errorsSeen = 0;
  for (let round = 0; round < 300; round++) {
    const chunks = randomChunks(random);
    const decoder = new StreamDecoder();
    const frames: number[][] = [];
    let errors = 0;
    for (const chunk of chunks) {
      decoder.feed(chunk, 0, chunk.length, (frame) => {
        frames.push([...frame]);
        return true;
      }, () => errors++);
    }
    const expected = referenceDecode(chunks);
    assert.deepEqual(frames, expected.frames, `round ${round}`);
    assert.equal(errors, expected.errors, `round ${round}`);
    framesSeen += frames.length;
    errorsSeen += errors;
  }
  assert.ok(framesSeen > 1000 && errorsSeen > 100, "the rounds exercise frames and errors");
});

/** Frames numbered 0, 1, ... of the given sizes (at least 18 bytes: the number needs room). */
function framesOfSizes(sizes: number[]): Uint8Array[] {
  return sizes.map((size, i) => {
    const frame = numberedFrame(i, size);
    for (let j = 18; j < size; j++) frame[j] = (j + i) & 0xff;
    return frame;
  });
}

function streamOf(frames: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(frames.reduce((sum, frame) => sum + 2 + frame.length, 0));
  let at = 0;
  for (const frame of frames) {
    bytes[at] = frame.length >> 8;
    bytes[at + 1] = frame.length & 0xff;
    bytes.set(frame, at + 2);
    at += 2 + frame.length;
  }
  return bytes;
}

function writeFully(fd: number, bytes: Uint8Array<ArrayBuffer>): void {
  for (let at = 0; at < bytes.length;) {
    const written = Number(
      libc.write(fd, Deno.UnsafePointer.of(bytes.subarray(at)), BigInt(bytes.length - at)),
    );
    assert.ok(written > 0, "the pipe takes the stream");
    at += written;
  }
}

function readAvailable(fd: number): Uint8Array {
  const buffer = new Uint8Array(1 << 17);
  const length = Number(libc.read(fd, Deno.UnsafePointer.of(buffer), BigInt(buffer.length)));
  return buffer.slice(0, Math.max(length, 0));
}

Deno.test("the decoder passes every length up to vdeplug4's limit and stops at the one above", () => {
  const sizes = [1, 14, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, MAX_STREAM_FRAME];
  assert.equal(MAX_STREAM_FRAME, 9236, "vdeplug4's VDE_ETHBUFSIZE + 2");
  const frames = sizes.map((size) => Array.from({ length: size }, (_, i) => i & 0xff));
  const over = [MAX_STREAM_FRAME + 1 >> 8, MAX_STREAM_FRAME + 1 & 0xff, 1, 2, 3];
  const stream = new Uint8Array([...encode(frames), ...over, ...encode([[7, 7]])]);
  for (const chunk of [1, 2, 1000, stream.length]) {
    const { frames: got, errors } = decodeInChunks(stream, chunk);
    assert.deepEqual(got.map((frame) => frame.length), sizes, `chunk ${chunk}`);
    assert.deepEqual(got, frames);
    assert.equal(errors, 1);
  }
});

Deno.test("a stream plug takes frames of every boundary size, drops only those too long for a slot", () => {
  const input = pipe(), output = pipe();
  const plug = new StreamPlug("stream", input.read, output.write, true);
  using memory = new MemoryPlug();
  try {
    const sizes = [60, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, MAX_STREAM_FRAME, 61];
    const frames = framesOfSizes(sizes);
    writeFully(input.write, streamOf(frames));
    closeQuietly(input.write);
    assert.deepEqual(runCable(plug, memory, {}), {
      kind: "ended",
      plugIndex: 0,
      reason: "end of input",
    });
    assert.deepEqual(memory.sent.map((frame) => frame.length), [60, MAX_FRAME - 1, MAX_FRAME, 61]);
    assert.deepEqual(memory.sent, [frames[0], frames[1], frames[2], frames[5]]);
    assert.equal(plug.counters[Counter.dropTooLong], 2);
    assert.equal(plug.counters[Counter.dropMalformed], 0);
  } finally {
    plug.close();
    closeQuietly(output.read);
  }
});

Deno.test("a stream plug writes frames of every size, the largest included, each after its length", () => {
  const input = pipe(), output = pipe();
  const plug = new StreamPlug("stream", input.read, output.write, true);
  using memory = new MemoryPlug();
  try {
    const frames = framesOfSizes([60, 1514, MAX_FRAME - 1, MAX_FRAME]);
    memory.inject(...frames);
    memory.end();
    runCable(plug, memory, {});
    const decoded: Uint8Array[] = [];
    const decoder = new StreamDecoder();
    let errors = 0;
    for (
      let bytes = readAvailable(output.read);
      bytes.length > 0;
      bytes = readAvailable(output.read)
    ) {
      decoder.feed(
        bytes,
        0,
        bytes.length,
        (frame) => decoded.push(frame.slice()) > 0,
        () => errors++,
      );
      if (decoded.length === frames.length) break;
    }
    assert.equal(errors, 0);
    assert.deepEqual(decoded, frames);
  } finally {
    plug.close();
    closeQuietly(input.write);
    closeQuietly(output.read);
  }
});

/** Starts `argv` in `host` and collects the frames of the stream it writes on stdout. */
function streamReader(host: Host, argv: string[]) {
  const argvInHost = host.wrap(argv);
  const child = new Deno.Command(argvInHost[0], {
    args: argvInHost.slice(1),
    // Open and silent: vde_plug ends when its input does.
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const frames: Uint8Array[] = [];
  const decoder = new StreamDecoder();
  const reading = (async () => {
    for await (const bytes of child.stdout) {
      decoder.feed(bytes, 0, bytes.length, (frame) => frames.push(frame.slice()) > 0, () => {});
    }
  })();
  return {
    frames,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      await reading.catch(() => {});
    },
  };
}

hostTest(
  "through dpipe, vde_plug's stream and vdeno's carry frames of every size to the largest, both ways",
  ["vde_plug", "dpipe"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    // In A, vde_plug on one cloud and vdeno on another, joined by their stdin and stdout.
    a.spawn(["dpipe", "vde_plug", "vxvde://239.2.0.8", "=", ...VDENO, "plug", "vxvde://239.2.0.9"]);
    const sizes = [60, 1514, 9000, MAX_FRAME - 1, MAX_FRAME, 62];
    const frames = framesOfSizes(sizes);
    for (const [from, to] of [["239.2.0.8", "239.2.0.9"], ["239.2.0.9", "239.2.0.8"]]) {
      const sender = b.spawn(["vde_plug", `vxvde://${from}`], { stdin: "piped" });
      await using receiver = streamReader(b, ["vde_plug", `vxvde://${to}`]);
      const writer = sender.child.stdin.getWriter();
      // Sent again until every size arrived: frames sent before the members heard each other
      // may be lost.
      await waitUntil(`every size from ${from} on ${to}`, async () => {
        await writer.write(streamOf(frames));
        return sizes.every((size, i) =>
          receiver.frames.some((frame) => frame.length === size && sequenceOf(frame) === i)
        );
      }, 30_000);
      for (const frame of receiver.frames) {
        assert.deepEqual(frame, frames[sequenceOf(frame)], `frame ${sequenceOf(frame)} intact`);
      }
      writer.releaseLock();
      await sender.stop("SIGKILL");
    }
  },
);
