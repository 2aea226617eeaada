/**
 * Frames in flight: a batch of preallocated slots that plugs fill and drain,
 * so the data path allocates nothing per frame.
 *
 * Each slot keeps HEADROOM bytes before the frame, where a plug may write its
 * own encapsulation (the vxvde header, a stream length) and send header and
 * frame with one call, without copying the frame.
 *
 * @module
 */

import { RECEIVED_RUNS_SIZE } from "../ffi/net.ts";
import { checksumArea } from "./checksum.ts";

/** Ethernet header length. */
export const ETH_HEADER = 14;
/** The largest frame vdeplug4 carries: a 9216-byte payload, the header and a VLAN tag. */
export const MAX_FRAME = 9216 + 14 + 4;
/** Bytes reserved before each frame for encapsulation. */
export const HEADROOM = 64;
/**
 * Bytes reserved after each frame: for padding and oversized input
 * detection, and for a frame sent in pieces (a keyed vxvde network), whose
 * datagrams, each behind a 44-byte prefix, lie in its slot: room for the
 * 13 pieces of the longest frame on a route of 783 bytes (IPv4; well below
 * IPv6's least MTU of 1280).
 */
export const TAILROOM = 512;
/** Size of one slot. */
export const SLOT_SIZE = Math.ceil((HEADROOM + MAX_FRAME + TAILROOM) / 64) * 64;
/**
 * Room for the largest TCP super-frame a TAP with offloads hands over: a
 * 64 KB IP packet behind its Ethernet header, with a margin.
 */
export const SUPER_FRAME_SIZE = MAX_FRAME + 65536 + 1024;
/** Frames moved per batch by default. */
export const DEFAULT_BATCH = 64;

/** How far behind real time a cable lets {@linkcode FrameBatch.timeMs} fall: it reads the clock this often. */
export const CLOCK_LAG_MS = 1000;

/** Words per slot of {@linkcode FrameBatch.held}. */
export const HELD_WORDS = 4;

/** A batch of frame slots; frame i lives at `offset(i)` with `lengths[i]` bytes. */
export class FrameBatch {
  readonly capacity: number;
  /** All slots, back to back. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** The slots as 32-bit words, for fast header checks. */
  readonly words: Uint32Array;
  /**
   * The one's complement sum of bytes [start, end) of {@linkcode bytes}, folded to 16 bits
   * (core/checksum.ts): the slots live in WebAssembly memory so that it can sum them.
   */
  readonly sum: (start: number, end: number) => number;
  /**
   * Where in {@linkcode bytes}, after the slots, a TAP assembles a TCP
   * super-frame ({@linkcode SUPER_FRAME_SIZE} bytes) to cut into the slots:
   * in the same memory, so that each segment is copied with `copyWithin`,
   * which makes no view.
   */
  readonly superFrameAt: number;
  /**
   * Where in {@linkcode bytes}, after the super-frame's room, a UDP socket
   * with UDP_GRO receives its runs ({@linkcode RECEIVED_RUNS_SIZE} bytes, see
   * ffi/net.ts), to copy them apart into the slots, again with `copyWithin`.
   */
  readonly runsAt: number;
  /** Frame lengths, one per slot. */
  readonly lengths: Int32Array;
  /**
   * How many frames of the batch are split: their first `heads[i]` bytes in
   * their slot, the rest at `rests[i]` in {@linkcode bytes} (the segments of a
   * super-frame, whose payloads stay where the TAP read them). When 0, every
   * frame is whole in its slot and `heads`, `rests` are not to be read. Whoever
   * fills a batch from empty sets it to 0 (the cable does, before each receive).
   */
  splitFrames = 0;
  /** Per slot: the bytes of a split frame in the slot, or 0 when it is whole there. */
  readonly heads: Int32Array;
  /** Per slot: where in {@linkcode bytes} the rest of a split frame is. */
  readonly rests: Int32Array;
  /**
   * Whether the frames received into this batch may be left split: the plug
   * it goes to next sends them as they are (`Plug.sendsSplitFrames`).
   */
  mayLeaveSplit = false;
  /**
   * Per slot, {@linkcode HELD_WORDS} words that describe a held frame: a TCP
   * super-frame whose headers (the merged ones, behind their virtio-net
   * header) are in the slot, and whose payload stays in the pieces it arrived
   * in, within {@linkcode bytes} (a UDP_GRO run): where the first piece
   * starts, the distance from one piece to the next, how many pieces (0 for
   * an ordinary frame), and the bytes of each piece but the last, which
   * holds the rest of `lengths[i]`. Only a plug that says it takes them
   * (`Plug.takesHeldFrames`) is sent held frames; it clears the entries it
   * sent and {@linkcode heldFrames}.
   */
  readonly held: Int32Array;
  /** How many slots hold a held frame: while 0, {@linkcode held} need not be looked at. */
  heldFrames = 0;
  /** A pointer to each slot's frame, made once so the data path creates none. */
  readonly framePointers: Deno.PointerObject[];
  /** How many slots hold frames. */
  count = 0;
  /**
   * The time to stamp this batch's frames with, in milliseconds since the epoch (MAC ageing, the
   * TAP's traffic rate). Whoever moves the frames keeps it current: the cable within
   * {@linkcode CLOCK_LAG_MS}, on a timer of its own, so that no wake-up that carries a frame reads
   * the clock.
   */
  timeMs: number = Date.now();

  constructor(capacity = DEFAULT_BATCH) {
    this.capacity = capacity;
    this.superFrameAt = capacity * SLOT_SIZE;
    this.runsAt = this.superFrameAt + SUPER_FRAME_SIZE;
    const area = checksumArea(this.runsAt + RECEIVED_RUNS_SIZE);
    this.bytes = area.bytes;
    this.sum = area.sum;
    this.words = new Uint32Array(this.bytes.buffer, 0, this.superFrameAt / 4);
    this.lengths = new Int32Array(capacity);
    this.heads = new Int32Array(capacity);
    this.rests = new Int32Array(capacity);
    this.held = new Int32Array(capacity * HELD_WORDS);
    const base = Deno.UnsafePointer.of(this.bytes)!;
    this.framePointers = Array.from(
      { length: capacity },
      (_, i) => Deno.UnsafePointer.offset(base, this.offset(i))!,
    );
  }

  /** Where frame i begins in {@linkcode bytes}. */
  offset(i: number): number {
    return i * SLOT_SIZE + HEADROOM;
  }

  /**
   * Makes every split frame whole in its slot, its rest copied behind its
   * head: before the place the rests are in is written again.
   */
  joinSplitFrames(): void {
    if (this.splitFrames === 0) return;
    const bytes = this.bytes;
    for (let i = 0; i < this.count; i++) {
      const head = this.heads[i];
      if (head === 0) continue;
      const rest = this.rests[i];
      bytes.copyWithin(this.offset(i) + head, rest, rest + this.lengths[i] - head);
      this.heads[i] = 0;
    }
    this.splitFrames = 0;
  }

  /** A view of frame i (allocates: not for the data path). */
  frame(i: number): Uint8Array<ArrayBuffer> {
    const start = this.offset(i);
    return this.bytes.subarray(start, start + this.lengths[i]);
  }

  /** Appends a copy of `frame`; returns false when the batch is full or the frame too long. */
  push(frame: Uint8Array): boolean {
    if (this.count >= this.capacity || frame.length > MAX_FRAME) return false;
    this.bytes.set(frame, this.offset(this.count));
    this.lengths[this.count++] = frame.length;
    return true;
  }
}

/**
 * What a plug builds once for each batch it meets (a datagram vector, pointers
 * into the slots) and finds again cheaply: the batch it met last without a
 * lookup, any other in a WeakMap, so a batch that goes away takes it along.
 */
export class PerBatch<T> {
  readonly #make: (batch: FrameBatch) => T;
  readonly #made = new WeakMap<FrameBatch, T>();
  #lastBatch?: FrameBatch;
  #last?: T;

  constructor(make: (batch: FrameBatch) => T) {
    this.#make = make;
  }

  /** What was made for `batch`, made now if it is new. */
  of(batch: FrameBatch): T {
    if (batch === this.#lastBatch) return this.#last!;
    let made = this.#made.get(batch);
    if (made === undefined) {
      made = this.#make(batch);
      this.#made.set(batch, made);
    }
    this.#lastBatch = batch;
    this.#last = made;
    return made;
  }
}

/** The destination MAC of the frame at `offset` has the group bit (broadcast or multicast). */
export function isGroupAddress(bytes: Uint8Array, offset: number): boolean {
  return (bytes[offset] & 1) === 1;
}

/** Formats six MAC bytes at `offset`. */
export function formatMac(bytes: Uint8Array, offset = 0): string {
  const parts: string[] = [];
  for (let i = 0; i < 6; i++) parts.push(bytes[offset + i].toString(16).padStart(2, "0"));
  return parts.join(":");
}
