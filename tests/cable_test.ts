/** core/cable.ts: the cable between two in-memory plugs, without root, in milliseconds. */

import assert from "node:assert/strict";
import { Wakeup } from "../ffi/poll.ts";
import { runCable } from "../core/cable.ts";
import { DEFAULT_BATCH, type FrameBatch, MAX_FRAME } from "../core/frames.ts";
import { PcapWriter } from "../core/pcap.ts";
import { MemoryPlug, numberedFrame, sequenceOf } from "./_memory_plug.ts";

/** Runs a cable until the plugs have drained what was queued: the stop descriptor is ready at once. */
function runOnce(a: MemoryPlug, b: MemoryPlug, capture?: PcapWriter) {
  const stop = new Wakeup();
  stop.wake();
  try {
    return runCable(a, b, { capture, watch: { fds: [stop.fd], onReady: () => false } });
  } finally {
    stop.close();
  }
}

const sequences = (frames: Uint8Array[]) => frames.map(sequenceOf);
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

Deno.test("the cable carries frames both ways, in order, in batches no larger than a batch", () => {
  using a = new MemoryPlug("memory://a");
  using b = new MemoryPlug("memory://b");
  a.inject(...range(200).map((n) => numberedFrame(n)));
  b.inject(...range(150, 1000).map((n) => numberedFrame(n)));
  assert.deepEqual(runOnce(a, b), { kind: "stopped" });
  assert.deepEqual(sequences(b.sent), range(200));
  assert.deepEqual(sequences(a.sent), range(150, 1000));
  assert.deepEqual(b.sentBatches, [64, 64, 64, 8]);
  assert.deepEqual(a.sentBatches, [64, 64, 22]);
  assert.ok(b.sentBatches.every((n) => n <= DEFAULT_BATCH));
  assert.equal(a.counters[0], 200, "framesIn of a");
});

Deno.test("the cable carries frames of every size from a header to the largest, byte for byte", () => {
  using a = new MemoryPlug();
  using b = new MemoryPlug();
  const sizes = [14, 15, 59, 60, 61, 1514, 1518, 9000, MAX_FRAME - 1, MAX_FRAME];
  const frames = sizes.map((size, i) => {
    const frame = numberedFrame(i, Math.max(size, 18)).subarray(0, size);
    for (let j = 18; j < size; j++) frame[j] = (j * 7 + i) & 0xff;
    return frame;
  });
  a.inject(...frames);
  runOnce(a, b);
  assert.deepEqual(b.sent.map((f) => f.length), sizes);
  for (let i = 0; i < sizes.length; i++) assert.deepEqual(b.sent[i], frames[i]);
});

Deno.test("the cable skips slots a plug dropped (length 0)", () => {
  using a = new MemoryPlug();
  using b = new MemoryPlug();
  a.inject(numberedFrame(1), new Uint8Array(0), numberedFrame(2));
  runOnce(a, b);
  assert.deepEqual(sequences(b.sent), [1, 2]);
  assert.deepEqual(b.sentBatches, [3]);
});

Deno.test("a plug whose input ends ends the cable once its queued frames are delivered", () => {
  using a = new MemoryPlug();
  using b = new MemoryPlug();
  a.inject(...range(100).map((n) => numberedFrame(n)));
  a.end();
  const end = runCable(a, b, {});
  assert.deepEqual(end, { kind: "ended", plugIndex: 0, reason: "end of input" });
  assert.deepEqual(sequences(b.sent), range(100));
});

Deno.test("a plug that fails ends the cable and the end names it and its reason", () => {
  class FailingSend extends MemoryPlug {
    override send(_batch: FrameBatch): void {
      throw new Error("Output failed: broken");
    }
  }
  class FailingReceive extends MemoryPlug {
    override receive(_batch: FrameBatch, _mask: number): boolean {
      throw new Error("Input failed: gone");
    }
  }
  {
    using a = new MemoryPlug();
    using b = new FailingSend();
    a.inject(numberedFrame(1));
    assert.deepEqual(runCable(a, b, {}), {
      kind: "ended",
      plugIndex: 1,
      reason: "Output failed: broken",
    });
  }
  {
    using a = new MemoryPlug();
    using b = new FailingReceive();
    b.inject(numberedFrame(1));
    assert.deepEqual(runCable(a, b, {}), {
      kind: "ended",
      plugIndex: 1,
      reason: "Input failed: gone",
    });
  }
});

Deno.test("each watched descriptor reaches onReady, which stops the cable by returning false", () => {
  using a = new MemoryPlug();
  using b = new MemoryPlug();
  const keepGoing = new Wakeup(), stop = new Wakeup();
  const seen: number[] = [];
  try {
    keepGoing.wake();
    let round = 0;
    const end = runCable(a, b, {
      watch: {
        fds: [keepGoing.fd, stop.fd],
        onReady: (fd) => {
          seen.push(fd);
          if (fd === keepGoing.fd) {
            keepGoing.acknowledge();
            // A frame and the stop arrive only after the cable served the first descriptor.
            if (++round === 1) {
              a.inject(numberedFrame(7));
              stop.wake();
            }
            return true;
          }
          return false;
        },
      },
    });
    assert.deepEqual(end, { kind: "stopped" });
    assert.deepEqual(seen, [keepGoing.fd, stop.fd]);
    assert.deepEqual(sequences(b.sent), [7]);
  } finally {
    keepGoing.close();
    stop.close();
  }
});

Deno.test("each plug is asked to cut segments to the size the other sends whole", () => {
  using a = new MemoryPlug("memory://a", { largestWholeFrame: 1436 });
  using b = new MemoryPlug("memory://b");
  runOnce(a, b);
  assert.equal(b.segmentSize, 1436);
  assert.equal(a.segmentSize, undefined);
});

Deno.test("a plug is asked to hold frames only when the other takes them, and never with a capture", () => {
  for (const capturing of [false, true]) {
    using a = new MemoryPlug("memory://a");
    using b = new MemoryPlug("memory://b", { takesHeldFrames: true });
    const file = Deno.makeTempFileSync({ suffix: ".pcap" });
    try {
      const capture = capturing ? new PcapWriter(file) : undefined;
      runOnce(a, b, capture);
      capture?.close();
      assert.equal(a.holding, !capturing, capturing ? "with a capture" : "without one");
      assert.equal(b.holding, false, "a does not take held frames");
    } finally {
      Deno.removeSync(file);
    }
  }
});

Deno.test("a capture records every frame that crosses the cable, both ways", () => {
  using a = new MemoryPlug();
  using b = new MemoryPlug();
  const file = Deno.makeTempFileSync({ suffix: ".pcap" });
  try {
    const capture = new PcapWriter(file);
    a.inject(numberedFrame(1), numberedFrame(2, 1514));
    b.inject(numberedFrame(3, 100));
    runOnce(a, b, capture);
    capture.close();
    const bytes = Deno.readFileSync(file);
    const view = new DataView(bytes.buffer);
    const lengths: number[] = [];
    for (let at = 24; at < bytes.length; at += 16 + view.getUint32(at + 8, true)) {
      lengths.push(view.getUint32(at + 8, true));
    }
    assert.deepEqual(lengths, [60, 1514, 100]);
  } finally {
    Deno.removeSync(file);
  }
});
