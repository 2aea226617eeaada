/**
 * app/dataplane.ts: a cable in a Worker, between two streams on pipes,
 * without root. The Worker runs the main module again, which is this file:
 * in the Worker it serves as the data plane, as main.ts does.
 */

import assert from "node:assert/strict";
import { closeQuietly, setNonBlocking } from "../ffi/libc.ts";
import { readInto, writeFrom } from "../ffi/io.ts";
import { pipe } from "../ffi/spawn.ts";
import { DataPlane, runDataPlaneWorker } from "../app/dataplane.ts";
import { StreamDecoder } from "../plugs/stream.ts";

const inWorker = (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== undefined;

function streamOf(frames: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(frames.reduce((sum, frame) => sum + 2 + frame.length, 0));
  let at = 0;
  for (const frame of frames) {
    bytes.set([frame.length >> 8, frame.length & 0xff], at);
    bytes.set(frame, at + 2);
    at += 2 + frame.length;
  }
  return bytes;
}

/** Reads what `fd` has until `count` frames are decoded or 10 s pass. */
async function readFrames(fd: number, count: number): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = [];
  const decoder = new StreamDecoder();
  const buffer = new Uint8Array(1 << 16);
  const deadline = Date.now() + 10_000;
  while (frames.length < count && Date.now() < deadline) {
    const length = readInto(fd, Deno.UnsafePointer.of(buffer), BigInt(buffer.length));
    if (length > 0) {
      decoder.feed(buffer, 0, length, (frame) => frames.push(frame.slice()) > 0, () => {});
    } else await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return frames;
}

if (inWorker) {
  runDataPlaneWorker();
} else {
  Deno.test("a data plane carries frames both ways in its Worker and stops when asked", async () => {
    const left = { in: pipe(), out: pipe() }, right = { in: pipe(), out: pipe() };
    // The test reads the plane's output without blocking the event loop.
    for (const end of [left.out, right.out]) setNonBlocking(end.read);
    const plane = await DataPlane.start([
      { stream: { name: "left", readFd: left.in.read, writeFd: left.out.write, owned: true } },
      { stream: { name: "right", readFd: right.in.read, writeFd: right.out.write, owned: true } },
    ]);
    try {
      assert.deepEqual(plane.plugs.map((plug) => plug.vnl), ["left", "right"]);
      const frames = Array.from({ length: 100 }, (_, i) => new Uint8Array(60 + i).fill(i));
      const bytes = streamOf(frames);
      writeFrom(left.in.write, Deno.UnsafePointer.of(bytes), BigInt(bytes.length));
      assert.deepEqual(await readFrames(right.out.read, 100), frames, "left to right");
      writeFrom(right.in.write, Deno.UnsafePointer.of(bytes), BigInt(bytes.length));
      assert.deepEqual(await readFrames(left.out.read, 100), frames, "right to left");
      // The counters are shared with the Worker, not copied.
      assert.equal(plane.plugs[0].counters[0], 100, "framesIn of left");
    } finally {
      plane.stop();
    }
    assert.deepEqual(await plane.finished, { kind: "stopped" });
    for (const fd of [left.in.write, left.out.read, right.in.write, right.out.read]) {
      closeQuietly(fd);
    }
  });
}
