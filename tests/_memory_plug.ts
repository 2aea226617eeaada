/**
 * A plug whose network is this process, as wireguard-go's ChannelTUN: a test
 * queues frames for it to receive and reads back the frames it was sent. Its
 * descriptor is a real eventfd, readable while frames are queued, so the
 * cable and the library wait on it as on any plug; nothing needs root.
 *
 * @module
 */

import { Wakeup } from "../ffi/poll.ts";
import { Counter, newCounters } from "../core/counters.ts";
import type { FrameBatch } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";

/** An in-memory plug for tests. */
export class MemoryPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  /** Copies of the frames the plug was sent, in order. */
  readonly sent: Uint8Array[] = [];
  /** The size of each batch `send` was given (frames, dropped slots included). */
  readonly sentBatches: number[] = [];
  /** What {@linkcode fitSegmentsTo} was last asked. */
  segmentSize?: number;
  largestWholeFrame?: number;
  /** Whether the plug says it takes held frames (`Plug.takesHeldFrames`). */
  readonly takesHeldFrames: boolean;
  /** Whether the cable asked the plug to hold frames (`Plug.holdFrames`). */
  holding = false;
  readonly #inbox: Uint8Array[] = [];
  readonly #wakeup = new Wakeup();
  #ended = false;
  #closed = false;

  constructor(
    vnl = "memory://",
    options: { largestWholeFrame?: number; takesHeldFrames?: boolean } = {},
  ) {
    this.vnl = vnl;
    this.fds = [this.#wakeup.fd];
    this.largestWholeFrame = options.largestWholeFrame;
    this.takesHeldFrames = options.takesHeldFrames ?? false;
  }

  /** Queues frames for the plug to receive. */
  inject(...frames: Uint8Array[]): void {
    this.#inbox.push(...frames.map((frame) => frame.slice()));
    this.#wakeup.wake();
  }

  /** Ends the plug's input once the queued frames are received, as a peer that closes. */
  end(): void {
    this.#ended = true;
    this.#wakeup.wake();
  }

  get backlog(): boolean {
    return this.#inbox.length > 0;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** How many queued frames are still to be received. */
  get queued(): number {
    return this.#inbox.length;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    // An ended plug stays readable, as a pipe at its end does.
    if (readyMask & 1 && !this.#ended) this.#wakeup.acknowledge();
    while (this.#inbox.length > 0 && batch.count < batch.capacity) {
      const frame = this.#inbox.shift()!;
      if (!batch.push(frame)) {
        this.counters[Counter.dropTooLong]++;
        continue;
      }
      this.counters[Counter.framesIn]++;
      this.counters[Counter.bytesIn] += frame.length;
    }
    return !(this.#ended && this.#inbox.length === 0);
  }

  send(batch: FrameBatch): void {
    this.sentBatches.push(batch.count);
    for (let i = 0; i < batch.count; i++) {
      if (batch.lengths[i] === 0) continue;
      this.sent.push(batch.frame(i).slice());
      this.counters[Counter.framesOut]++;
      this.counters[Counter.bytesOut] += batch.lengths[i];
    }
  }

  fitSegmentsTo(size: number): void {
    this.segmentSize = size;
  }

  holdFrames(): void {
    this.holding = true;
  }

  describe(): Record<string, unknown> {
    return { queued: this.#inbox.length };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeup.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A 60-byte broadcast frame whose payload begins with `sequence` (big-endian, 4 bytes). */
export function numberedFrame(sequence: number, length = 60): Uint8Array {
  const frame = new Uint8Array(length);
  frame.fill(0xff, 0, 6);
  frame.set([0x02, 0, 0, 0, 0, 0x01], 6);
  frame.set([0x88, 0xb5], 12);
  new DataView(frame.buffer).setUint32(14, sequence);
  return frame;
}

/** The sequence number {@linkcode numberedFrame} wrote. */
export function sequenceOf(frame: Uint8Array): number {
  return new DataView(frame.buffer, frame.byteOffset).getUint32(14);
}
