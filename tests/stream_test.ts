/** plugs/stream.ts: frames on a byte stream, as vde_plug writes them. */

import assert from "node:assert/strict";
import { MAX_STREAM_FRAME, StreamDecoder } from "../plugs/stream.ts";

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
