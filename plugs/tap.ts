/**
 * `tap://NAME`: a Linux TAP interface. The frames the kernel sends out of the
 * interface come in here, and frames sent here appear on it as received.
 *
 * An existing persistent TAP (`ip tuntap add mode tap name NAME user USER`)
 * is opened by its owner without privileges; otherwise creating one needs
 * CAP_NET_ADMIN, and the kernel removes it again when the plug closes.
 *
 * @module
 */

import { closeQuietly, Errno, errno, setIovec, setNonBlocking, strerror } from "../ffi/libc.ts";
import { readInto, readVector, writeFrom, writeVector } from "../ffi/io.ts";
import { socketPair } from "../ffi/unix.ts";
import { openTap, setTapOffloads, tapHasVnetHeader } from "../ffi/tap.ts";
import { MAX_SEGMENTS, numericAddress } from "../ffi/net.ts";
import { Counter, newCounters } from "../core/counters.ts";
import {
  type FrameBatch,
  HELD_WORDS,
  MAX_FRAME,
  SUPER_FRAME_SIZE,
  TAILROOM,
} from "../core/frames.ts";
import {
  arpFrame,
  pingFrame,
  routerSolicitation,
  tcpFrame,
  udpFrame,
  WARM_ACK_RUN,
  WARM_BURST_SEGMENTS,
  WARM_LOCAL_MAC,
  WARM_LOOP_MAC,
  WARM_PEER_MACS,
  WARM_SEGMENT,
  WARM_UDP_RUN,
  WARM_UP_ROUNDS,
  warmSequence,
} from "./_warmup.ts";
import {
  coalesceFrames,
  completeChecksum,
  GSO_NONE,
  GSO_TCPV4,
  GSO_UDP_L4,
  MERGES_UDP,
  NEEDS_CSUM,
  Segmenter,
  VNET_HEADER,
  VnetHeader,
} from "./_offload.ts";
import { type Plug, PlugEnded, type WarmUpResult, type WarmUpState } from "../core/plug.ts";
import { splitQuoted, VnlError } from "../core/vnl.ts";

const READ_SIZE = BigInt(MAX_FRAME + TAILROOM);
const EBADFD = 77; // what a read returns once the interface is gone
/** Frames per second below which traffic is light: one read per wake-up. */
const LIGHT_TRAFFIC_RATE = 1000;

/** A plug on a TAP interface, or on any descriptor that carries one frame per read and write. */
export class TapPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  /** Counters; a warm-up puts scratch ones in their place while it runs. */
  counters: Float64Array = newCounters();
  /** The interface name. */
  readonly name: string;
  /** The interface's descriptor; a warm-up puts a socket pair's end in its place while it runs. */
  #fd: number;
  #closed = false;
  /** Whether traffic was light over the last tick of the batch's clock, and what it was judged on. */
  #light = true;
  #judgedAt = 0;
  #framesWhenJudged = 0;
  /** Set when frames carry a virtio-net header: the TAP offers offloads. */
  readonly #segmenter?: Segmenter;
  /** The batch the vectors and pointers below were made for. */
  #preparedFor?: FrameBatch;
  /** The virtio-net header of the frame at hand, decoded. */
  readonly #vnet = new VnetHeader();
  #batchView?: DataView;
  /** Per slot, a readv vector: the slot (header and frame), then the rest of a super-frame. */
  #readVectors: Deno.PointerObject[] = [];
  /** The memory the readv vectors point into, held so the collector keeps it. */
  #readVectorMemory?: Uint32Array;
  /** The address of the batch's bytes, for the writev vectors of merged segments. */
  #batchAddress = 0;
  /**
   * A writev vector, as 32-bit halves: a frame behind its header, or a merged run (the first
   * frame whole, then each other segment's payload). A writev spares the BigInt length of write.
   */
  #writeVector = new Uint32Array(0);
  #writeVectorPointer: Deno.PointerObject | null = null;

  constructor(vnl: string, rest: string, fd?: number) {
    this.vnl = vnl;
    const [name] = splitQuoted(rest, "/");
    if (fd === undefined) {
      if (name === "") {
        throw new VnlError("Missing interface name: use tap://NAME, e.g. tap://tap0");
      }
      const tap = openTap(name);
      fd = tap.fd;
      this.name = tap.name;
    } else {
      this.name = name;
    }
    this.#fd = fd;
    this.fds = [fd];
    if (tapHasVnetHeader(fd)) {
      this.#segmenter = new Segmenter(MAX_FRAME);
    }
  }

  /** With offloads, the segments of a super-frame may be left split (`FrameBatch.heads`). */
  get leavesFramesSplit(): boolean {
    return this.#segmenter !== undefined;
  }

  /** Held frames (core/frames.ts) go out as they are, as super-frames: only with offloads. */
  get takesHeldFrames(): boolean {
    return this.#segmenter !== undefined;
  }

  fitSegmentsTo(size: number): void {
    this.#segmenter?.fitTo(size);
  }

  /** True while a super-frame has segments left that did not fit the last batch. */
  get backlog(): boolean {
    return this.#segmenter?.pending ?? false;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    if (this.#segmenter) return this.#receiveWithHeaders(batch, this.#segmenter);
    return this.#receiveFrames(batch, readyMask);
  }

  #receiveFrames(batch: FrameBatch, _readyMask: number): boolean {
    const counters = this.counters;
    while (batch.count < batch.capacity) {
      const i = batch.count;
      const length = readInto(this.#fd, batch.framePointers[i], READ_SIZE);
      if (length < 0) {
        const code = errno();
        if (code === Errno.EAGAIN || code === Errno.EINTR) return true;
        throw this.#failure(code);
      }
      if (length === 0) return false;
      if (length > MAX_FRAME) {
        counters[Counter.dropTooLong]++;
        continue;
      }
      this.#accept(batch, i, length);
    }
    return true;
  }

  #receiveWithHeaders(batch: FrameBatch, segmenter: Segmenter): boolean {
    const counters = this.counters;
    const view = this.#viewOf(batch);
    const bytes = batch.bytes;
    const vnet = this.#vnet;
    // Traffic this light has one frame per wake-up: reading on only to hear EAGAIN would cost a
    // system call per frame, and the poll says soon enough if there is more.
    if (batch.timeMs !== this.#judgedAt) this.#judgeTraffic(batch.timeMs);
    const light = this.#light;
    let reads = 0;
    while (batch.count < batch.capacity) {
      const i = batch.count;
      const frameStart = batch.offset(i);
      if (segmenter.pending) {
        if (batch.mayLeaveSplit) {
          this.#accept(batch, i, segmenter.nextHead(batch, view, frameStart));
          batch.heads[i] = segmenter.headerLength;
          batch.rests[i] = segmenter.restAt;
          batch.splitFrames++;
        } else {
          this.#accept(batch, i, segmenter.next(batch, view, frameStart));
          batch.heads[i] = 0;
        }
        continue;
      }
      if (light && reads > 0) return true;
      // A super-frame cut across two batches leaves as two runs and reaches the peer's TAP as
      // two writes: the next one, most likely as long as the last, starts a batch of its own.
      if (i > 0 && batch.capacity - i < segmenter.lastSegmentCount) return true;
      // The read may bring a super-frame, which takes the place the split frames' payloads are in.
      batch.joinSplitFrames();
      reads++;
      const length = readVector(this.#fd, this.#readVectors[i], 2) - VNET_HEADER;
      if (length < 0) {
        if (length === -VNET_HEADER) return false;
        const code = errno();
        if (code === Errno.EAGAIN || code === Errno.EINTR) return true;
        throw this.#failure(code);
      }
      const header = vnet.decode(view, frameStart - VNET_HEADER);
      if (header.gsoType !== GSO_NONE) {
        if (length > SUPER_FRAME_SIZE) {
          counters[Counter.dropTooLong]++;
          continue;
        }
        // The head of the super-frame is in the slot, the rest already where it belongs.
        const at = batch.superFrameAt;
        bytes.copyWithin(at, frameStart, frameStart + Math.min(length, MAX_FRAME));
        if (!segmenter.load(batch, at, length, header.gsoType, header.gsoSize, header.csumStart)) {
          counters[Counter.dropMalformed]++;
        } else counters[Counter.superFramesIn]++;
        continue;
      }
      if (length > MAX_FRAME) {
        counters[Counter.dropTooLong]++;
        continue;
      }
      if ((header.flags & NEEDS_CSUM) !== 0) {
        const { csumStart, csumOffset } = header;
        if (segmenter.tooLargeToFit(length, csumOffset)) {
          const at = batch.superFrameAt;
          bytes.copyWithin(at, frameStart, frameStart + length);
          if (!segmenter.loadSegment(batch, at, length, csumStart)) {
            counters[Counter.dropMalformed]++;
          }
          continue;
        }
        if (!completeChecksum(view, frameStart, length, csumStart, csumOffset)) {
          counters[Counter.dropMalformed]++;
          continue;
        }
      }
      this.#accept(batch, i, length);
      batch.heads[i] = 0;
    }
    return true;
  }

  #judgeTraffic(timeMs: number): void {
    const frames = this.counters[Counter.framesIn];
    const elapsedMs = timeMs - this.#judgedAt;
    this.#light = frames - this.#framesWhenJudged < (LIGHT_TRAFFIC_RATE * elapsedMs) / 1000;
    this.#judgedAt = timeMs;
    this.#framesWhenJudged = frames;
  }

  #accept(batch: FrameBatch, i: number, length: number): void {
    batch.lengths[i] = length;
    batch.count++;
    this.counters[Counter.framesIn]++;
    this.counters[Counter.bytesIn] += length;
  }

  /** A view of `batch`, its vectors made: small enough for V8 to inline, unlike #prepare. */
  #viewOf(batch: FrameBatch): DataView {
    return this.#preparedFor === batch ? this.#batchView! : this.#prepare(batch);
  }

  /** Makes the readv and writev vectors for `batch`'s slots, once per batch. */
  #prepare(batch: FrameBatch): DataView {
    const vectors = new Uint32Array(batch.capacity * 8); // two iovecs per slot
    const base = numericAddress(batch.bytes);
    const overflow = base + batch.superFrameAt + MAX_FRAME;
    const vectorsBase = Deno.UnsafePointer.of(vectors)!;
    this.#readVectors = [];
    for (let i = 0; i < batch.capacity; i++) {
      setIovec(vectors, i * 2, base + batch.offset(i) - VNET_HEADER, VNET_HEADER + MAX_FRAME);
      setIovec(vectors, i * 2 + 1, overflow, SUPER_FRAME_SIZE - MAX_FRAME);
      this.#readVectors.push(Deno.UnsafePointer.offset(vectorsBase, i * 32)!);
    }
    this.#preparedFor = batch;
    this.#batchView = new DataView(batch.bytes.buffer);
    this.#batchAddress = base;
    // Room for a held frame's headers and its pieces, as many as a UDP_GRO run has.
    this.#writeVector = new Uint32Array(Math.max(batch.capacity, MAX_SEGMENTS + 1) * 4);
    this.#writeVectorPointer = Deno.UnsafePointer.of(this.#writeVector);
    this.#readVectorMemory = vectors;
    return this.#batchView;
  }

  #failure(code: number): PlugEnded {
    return new PlugEnded(
      code === EBADFD
        ? `tap://${this.name} was deleted`
        : `tap://${this.name} failed: ${strerror(code)}`,
    );
  }

  send(batch: FrameBatch): void {
    if (this.#segmenter) {
      // Its own warm-up loops what it received back to it: split, if the cable allowed that.
      batch.joinSplitFrames();
      this.#sendWithHeaders(batch, this.#viewOf(batch));
      return;
    }
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      const written = writeFrom(this.#fd, batch.framePointers[i], BigInt(length));
      this.#count(written < 0, 1, length);
    }
  }

  /**
   * Sends each frame behind a virtio-net header: all zero for a frame as it
   * is; runs of segments of one TCP stream, or datagrams of one UDP flow, go
   * as one super-frame (see `coalesceFrames`), the first frame and the
   * others' payloads in one writev.
   */
  #sendWithHeaders(batch: FrameBatch, view: DataView): void {
    const vector = this.#writeVector;
    for (let i = 0; i < batch.count;) {
      const length = batch.lengths[i];
      if (length === 0) {
        i++;
        continue;
      }
      const header = batch.offset(i) - VNET_HEADER;
      if (batch.heldFrames > 0 && batch.held[i * HELD_WORDS + 2] !== 0) {
        this.#sendHeld(batch, view, i, header);
        i++;
        continue;
      }
      // A frame with none after it has nothing to merge with: at light traffic, entering
      // coalesceFrames's cold code would cost more than the frame (bench/README.md).
      const merged = i + 1 < batch.count ? coalesceFrames(batch, view, i) : 1;
      if (merged === 1) VnetHeader.clear(view, header);
      setIovec(vector, 0, this.#batchAddress + header, VNET_HEADER + length);
      const headerLength = merged === 1 ? 0 : this.#vnet.decode(view, header).headerLength;
      let total = length, frames = 1;
      for (let k = 1; k < merged; k++) {
        const next = batch.lengths[i + k];
        if (next === 0) continue;
        const start = this.#batchAddress + batch.offset(i + k) + headerLength;
        setIovec(vector, frames++, start, next - headerLength);
        total += next;
      }
      const written = writeVector(this.#fd, this.#writeVectorPointer, frames);
      if (written >= 0 && merged > 1) this.counters[Counter.superFramesOut]++;
      this.#count(written < 0, frames, total);
      i += merged;
    }
  }

  /**
   * Sends held frame i, a super-frame (core/frames.ts): its virtio-net header and headers from
   * the slot, the payloads from where they arrived, in one writev; then clears its entry.
   */
  #sendHeld(batch: FrameBatch, view: DataView, i: number, header: number): void {
    const vector = this.#writeVector;
    const held = batch.held;
    const at = i * HELD_WORDS;
    const first = this.#batchAddress + held[at], stride = held[at + 1];
    const pieces = held[at + 2], piece = held[at + 3];
    const headerLength = this.#vnet.decode(view, header).headerLength;
    const payload = batch.lengths[i] - headerLength;
    setIovec(vector, 0, this.#batchAddress + header, VNET_HEADER + headerLength);
    for (let k = 0; k < pieces - 1; k++) setIovec(vector, k + 1, first + k * stride, piece);
    setIovec(vector, pieces, first + (pieces - 1) * stride, payload - (pieces - 1) * piece);
    const written = writeVector(this.#fd, this.#writeVectorPointer, pieces + 1);
    if (written >= 0) this.counters[Counter.superFramesOut]++;
    this.#count(written < 0, pieces, pieces * headerLength + payload);
    held[at + 2] = 0;
    batch.heldFrames--;
  }

  #count(failed: boolean, frames: number, bytes: number): void {
    const counters = this.counters;
    if (failed) counters[Counter.dropSendError] += frames;
    else {
      counters[Counter.framesOut] += frames;
      counters[Counter.bytesOut] += bytes;
    }
  }

  /**
   * Runs receive and send on synthetic frames (pings, and a TCP super-frame
   * when the TAP has offloads) through a socket pair of its own in place of
   * the TAP, so V8 has compiled them before the first real frame; nothing
   * reaches the interface and the counters are scratch ones.
   */
  warmUp(batch: FrameBatch): WarmUpResult {
    const state = this.#startWarmUp(batch, false);
    if (!state) return { framesIn: 0, framesOut: 0 };
    try {
      for (let round = 0; round < WARM_UP_ROUNDS; round++) {
        state.feed(round);
        batch.count = 0;
        for (;;) {
          const before = batch.count;
          this.receive(batch, 1);
          if (batch.count >= batch.capacity - 1) {
            this.send(batch);
            batch.count = 0;
          } else if (batch.count === before && !this.backlog) break;
        }
        // A slot the other plug dropped is sent as length 0.
        if (round % 4 === 1) batch.lengths[batch.count++] = 0;
        this.send(batch);
        state.drain();
      }
    } catch {
      // A plug that cannot warm up only starts slower.
    }
    return state.end();
  }

  /**
   * Puts a socket pair's end in place of the TAP and scratch counters in
   * place of the plug's; each round writes an ARP request or a router
   * solicitation and a ping to the other end, with offloads a TCP
   * super-frame every other round, and now and then two super-frames to
   * {@linkcode WARM_LOOP_MAC}, more segments than a batch holds.
   */
  startWarmUp(batch: FrameBatch): WarmUpState | undefined {
    return this.#startWarmUp(batch, true);
  }

  /** {@linkcode startWarmUp}, with or without the bursts that only a cable loops back. */
  #startWarmUp(batch: FrameBatch, bursts: boolean): WarmUpState | undefined {
    const counters = this.counters, fd = this.#fd, timeMs = batch.timeMs;
    const light = this.#light, judgedAt = this.#judgedAt, framesWhenJudged = this.#framesWhenJudged;
    let pair: [number, number];
    try {
      pair = socketPair();
      setNonBlocking(pair[0]);
      setNonBlocking(pair[1]);
    } catch {
      return undefined;
    }
    const scratch = newCounters();
    this.#fd = pair[0];
    this.counters = scratch;
    const headerBytes = this.#segmenter ? VNET_HEADER : 0;
    const input = new Uint8Array(headerBytes + 54 + WARM_BURST_SEGMENTS * WARM_SEGMENT);
    const inputView = new DataView(input.buffer);
    const inputPointer = Deno.UnsafePointer.of(input);
    const drain = new Uint8Array(SUPER_FRAME_SIZE + 1024);
    const drainPointer = Deno.UnsafePointer.of(drain);
    const header = new VnetHeader();
    /**
     * Writes `count` TCP frames of `payload` bytes to `to`, their checksum left to the TAP's plug
     * as the kernel hands them; with `offloaded`, as a super-frame of `WARM_SEGMENT` segments.
     */
    const tcp = (
      to: number[],
      payload: number,
      sequence: number,
      count: number,
      offloaded: boolean,
    ) => {
      header.flags = NEEDS_CSUM;
      header.gsoType = offloaded ? GSO_TCPV4 : GSO_NONE;
      header.headerLength = offloaded ? 54 : 0;
      header.gsoSize = offloaded ? WARM_SEGMENT : 0;
      header.csumStart = 34;
      header.csumOffset = 16;
      header.encode(inputView, 0);
      const length = tcpFrame(inputView, headerBytes, to, WARM_LOCAL_MAC, payload, sequence);
      for (let k = 0; k < count; k++) {
        writeFrom(pair[1], inputPointer, BigInt(headerBytes + length));
      }
    };
    let superFrames = 0, udpIds = 0xfffe;
    const superFrame = (to: number[], segments: number) =>
      tcp(to, segments * WARM_SEGMENT, warmSequence(superFrames++), 1, true);
    return {
      fds: [pair[0]],
      feed: (round) => {
        const peer = WARM_PEER_MACS[round % 2];
        // What starts traffic, an ARP broadcast and pings, then a TCP super-frame every other round.
        input.fill(0, 0, headerBytes);
        let length = round % 2 === 0
          ? arpFrame(inputView, headerBytes, WARM_LOCAL_MAC)
          : routerSolicitation(inputView, headerBytes, WARM_LOCAL_MAC);
        writeFrom(pair[1], inputPointer, BigInt(headerBytes + length));
        length = pingFrame(inputView, headerBytes, peer, WARM_LOCAL_MAC);
        writeFrom(pair[1], inputPointer, BigInt(headerBytes + length));
        if (this.#segmenter && round % 2 === 0) superFrame(peer, 8);
        if (this.#segmenter && bursts && round % 8 === 3) {
          superFrame(WARM_LOOP_MAC, WARM_BURST_SEGMENTS);
          superFrame(WARM_LOOP_MAC, WARM_BURST_SEGMENTS);
        }
        // A full-size segment the kernel did not offload, which the TAP's plug completes and cuts.
        if (this.#segmenter && round % 8 === 5) {
          tcp(peer, WARM_SEGMENT, warmSequence(round >> 3), 1, false);
        }
        // A sender's plug gets its receiver's pure ACKs back as runs: those take other branches.
        if (this.#segmenter && bursts && round % 8 === 7) {
          tcp(WARM_LOOP_MAC, 0, warmSequence(round >> 3), WARM_ACK_RUN, false);
        }
        // A run of one UDP flow, merged as one super-frame on the way back (the cable's loops).
        if (this.#segmenter && round % 4 === 2) {
          input.fill(0, 0, headerBytes);
          const to = bursts ? WARM_LOOP_MAC : peer;
          for (let k = 0; k < WARM_UDP_RUN; k++) {
            length = udpFrame(inputView, headerBytes, to, WARM_LOCAL_MAC, 64, udpIds++ & 0xffff);
            writeFrom(pair[1], inputPointer, BigInt(headerBytes + length));
          }
        }
        // An application's UDP GSO message, where the TAP offers USO: cut into its datagrams.
        if (this.#segmenter && MERGES_UDP && round % 4 === 0) {
          length = udpFrame(inputView, headerBytes, peer, WARM_LOCAL_MAC, WARM_UDP_RUN * 64, 0);
          header.flags = NEEDS_CSUM;
          header.gsoType = GSO_UDP_L4;
          header.headerLength = 42;
          header.gsoSize = 64;
          header.csumStart = 34;
          header.csumOffset = 6;
          header.encode(inputView, 0);
          writeFrom(pair[1], inputPointer, BigInt(headerBytes + length));
        }
        // The batch's clock moves on a tick, which the TAP's traffic judgement follows.
        if (round % 8 === 0) batch.timeMs += 1000;
      },
      drain: () => {
        while (readInto(pair[1], drainPointer, BigInt(drain.length)) > 0);
      },
      end: () => {
        // Segments of a synthetic super-frame must never follow the TAP's own frames.
        while (this.backlog) {
          batch.count = 0;
          this.receive(batch, 1);
        }
        this.#fd = fd;
        this.counters = counters;
        this.#light = light;
        this.#judgedAt = judgedAt;
        this.#framesWhenJudged = framesWhenJudged;
        batch.timeMs = timeMs;
        batch.count = 0;
        closeQuietly(pair[0]);
        closeQuietly(pair[1]);
        return { framesIn: scratch[Counter.framesIn], framesOut: scratch[Counter.framesOut] };
      },
    };
  }

  describe(): Record<string, unknown> {
    return { interface: this.name };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#segmenter) setTapOffloads(this.#fd, false);
    closeQuietly(this.#fd);
  }
}
