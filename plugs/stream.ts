/**
 * Frames on a byte stream, as `vde_plug` writes them to stdout and `dpipe`
 * carries them: a 2-byte big-endian length, then the frame. A length of 0 is
 * skipped; a length above vdeplug4's limit (its largest frame + 2) is a
 * framing error; a frame within that limit but longer than vdeno's largest is
 * dropped and counted, and the frames after it are kept.
 *
 * Unlike vdeplug4's reader, a length header split across two reads is kept,
 * not lost.
 *
 * @module
 */

import {
  closeQuietly,
  Errno,
  errno,
  restoreStatusFlags,
  setIovec,
  setNonBlocking,
  strerror,
} from "../ffi/libc.ts";
import { readInto, writeFrom, writeVector } from "../ffi/io.ts";
import { numericAddress } from "../ffi/net.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { type FrameBatch, HEADROOM, MAX_FRAME, SLOT_SIZE } from "../core/frames.ts";
import { type Plug, PlugEnded } from "../core/plug.ts";

/** The largest length a stream may announce: vdeplug4's MAXPACKET (VDE_ETHBUFSIZE + 2). */
export const MAX_STREAM_FRAME = MAX_FRAME + 2;
const READ_BUFFER = 1 << 16;

/** Splits a byte stream into frames, keeping partial frames between reads. */
export class StreamDecoder {
  readonly #partial = new Uint8Array(2 + MAX_STREAM_FRAME);
  #have = 0;
  #need = 2;

  /** A whole frame waits for delivery. */
  get ready(): boolean {
    return this.#need > 2 && this.#have === this.#need;
  }

  /**
   * Feeds `data[start, end)`; calls `deliver` for each complete frame (a view
   * valid only during the call) and `malformed` for a framing error, after
   * which the rest of this chunk is dropped as vdeplug4 does. Returns the
   * position it stopped at: `end`, or earlier when `deliver` returned false.
   */
  feed(
    data: Uint8Array,
    start: number,
    end: number,
    deliver: (frame: Uint8Array) => boolean,
    malformed: () => void,
  ): number {
    let position = start;
    if (this.ready) {
      if (!deliver(this.#partial.subarray(2, this.#need))) return position;
      this.#have = 0;
      this.#need = 2;
    }
    while (position < end) {
      if (this.#have === 0 && end - position >= 2) {
        const length = (data[position] << 8) | data[position + 1];
        if (length === 0) {
          position += 2;
          continue;
        }
        if (length > MAX_STREAM_FRAME) {
          malformed();
          return end;
        }
        if (end - position >= 2 + length) {
          if (!deliver(data.subarray(position + 2, position + 2 + length))) return position;
          position += 2 + length;
          continue;
        }
      }
      const take = Math.min(this.#need - this.#have, end - position);
      this.#partial.set(data.subarray(position, position + take), this.#have);
      this.#have += take;
      position += take;
      if (this.#have < this.#need) break;
      if (this.#need === 2) {
        const length = (this.#partial[0] << 8) | this.#partial[1];
        if (length === 0) {
          this.#have = 0;
        } else if (length > MAX_STREAM_FRAME) {
          this.#have = 0;
          malformed();
          return end;
        } else {
          this.#need = 2 + length;
        }
      } else {
        // Delivery refused: the frame stays whole for the next call.
        if (!deliver(this.#partial.subarray(2, this.#need))) return position;
        this.#have = 0;
        this.#need = 2;
      }
    }
    return position;
  }
}

/** A plug on a pair of descriptors carrying the vde_plug stream format. */
export class StreamPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  readonly #readFd: number;
  readonly #writeFd: number;
  readonly #decoder = new StreamDecoder();
  readonly #input = new Uint8Array(READ_BUFFER);
  readonly #inputPointer = Deno.UnsafePointer.of(this.#input);
  #inputStart = 0;
  #inputEnd = 0;
  #ended = false;
  readonly #ownsDescriptors: boolean;
  /** The output's flags before it was made non-blocking, to put back on a shared descriptor. */
  readonly #writeFlags: number;
  #iovecs = new Uint8Array(0);
  #iovecWords = new Uint32Array(0);
  /** The batch slot of each iovec of the last write. */
  #iovecSlots = new Int32Array(0);
  /** The rest of a frame the output took only part of: it goes out before anything else. */
  readonly #pending = new Uint8Array(2 + MAX_STREAM_FRAME);
  readonly #pendingPointer = Deno.UnsafePointer.of(this.#pending);
  #pendingStart = 0;
  #pendingEnd = 0;
  #closed = false;

  constructor(vnl: string, readFd: number, writeFd: number, ownsDescriptors: boolean) {
    this.vnl = vnl;
    this.#readFd = readFd;
    this.#writeFd = writeFd;
    this.fds = [readFd];
    this.outputFd = writeFd;
    this.#ownsDescriptors = ownsDescriptors;
    // A reader that stops reading (a stalled command, a stuck dpipe) must cost frames, never
    // the cable: writes that do not fit return at once.
    this.#writeFlags = setNonBlocking(writeFd);
  }

  readonly outputFd: number;

  /** Part of a frame waits for the output to take it. */
  get pendingOutput(): boolean {
    return this.#pendingStart < this.#pendingEnd;
  }

  /** Input read but not yet delivered because the batch was full. */
  get backlog(): boolean {
    return this.#inputStart < this.#inputEnd || this.#decoder.ready;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    if (this.#ended) return false;
    if (this.#inputStart >= this.#inputEnd && !this.#decoder.ready) {
      if (!(readyMask & 1)) return true;
      const length = Number(readInto(this.#readFd, this.#inputPointer, BigInt(READ_BUFFER)));
      if (length < 0) {
        const code = errno();
        if (code === Errno.EAGAIN || code === Errno.EINTR) return true;
        throw new PlugEnded(`Stream input failed: ${strerror(code)}`);
      }
      if (length === 0) {
        this.#ended = true;
        return false;
      }
      this.#inputStart = 0;
      this.#inputEnd = length;
    }
    const counters = this.counters;
    this.#inputStart = this.#decoder.feed(
      this.#input,
      this.#inputStart,
      this.#inputEnd,
      (frame) => {
        if (batch.count >= batch.capacity) return false;
        if (frame.length > MAX_FRAME) {
          counters[Counter.dropTooLong]++;
          return true;
        }
        const i = batch.count++;
        batch.bytes.set(frame, batch.offset(i));
        batch.lengths[i] = frame.length;
        counters[Counter.framesIn]++;
        counters[Counter.bytesIn] += frame.length;
        return true;
      },
      () => counters[Counter.dropMalformed]++,
    );
    return true;
  }

  /** Writes what is left of a partly written frame; true when nothing is left. */
  flush(): boolean {
    while (this.#pendingStart < this.#pendingEnd) {
      const written = writeFrom(
        this.#writeFd,
        Deno.UnsafePointer.offset(this.#pendingPointer!, this.#pendingStart),
        BigInt(this.#pendingEnd - this.#pendingStart),
      );
      if (written < 0) {
        const code = errno();
        if (code === Errno.EINTR) continue;
        if (code === Errno.EAGAIN) return false;
        throw new PlugEnded(`Stream output failed: ${strerror(code)}`);
      }
      this.#pendingStart += written;
    }
    this.#pendingStart = this.#pendingEnd = 0;
    return true;
  }

  send(batch: FrameBatch): void {
    const counters = this.counters;
    if (this.pendingOutput && !this.flush()) {
      for (let i = 0; i < batch.count; i++) {
        if (batch.lengths[i] > 0) counters[Counter.dropQueueFull]++;
      }
      return;
    }
    if (this.#iovecs.length < batch.capacity * 16) {
      this.#iovecs = new Uint8Array(batch.capacity * 16);
      this.#iovecWords = new Uint32Array(this.#iovecs.buffer);
      this.#iovecSlots = new Int32Array(batch.capacity);
    }
    const words = this.#iovecWords;
    const slots = this.#iovecSlots;
    const base = numericAddress(batch.bytes);
    let count = 0;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      const start = i * SLOT_SIZE + HEADROOM - 2;
      batch.bytes[start] = length >> 8;
      batch.bytes[start + 1] = length & 0xff;
      setIovec(words, count, base + start, length + 2);
      slots[count++] = i;
    }
    if (count === 0) return;
    let written: number;
    do {
      written = writeVector(this.#writeFd, Deno.UnsafePointer.of(this.#iovecs), count);
    } while (written < 0 && errno() === Errno.EINTR);
    if (written < 0) {
      const code = errno();
      if (code !== Errno.EAGAIN) throw new PlugEnded(`Stream output failed: ${strerror(code)}`);
      written = 0;
    }
    for (let n = 0; n < count; n++) {
      const size = words[n * 4 + 2];
      if (written >= size) {
        written -= size;
      } else if (written > 0) {
        // Part of this frame went out: the rest must follow before anything else, or the
        // stream is out of step.
        const start = slots[n] * SLOT_SIZE + HEADROOM - 2 + written;
        this.#pending.set(batch.bytes.subarray(start, start + size - written), 0);
        this.#pendingStart = 0;
        this.#pendingEnd = size - written;
        written = 0;
      } else {
        counters[Counter.dropQueueFull]++;
        continue;
      }
      counters[Counter.framesOut]++;
      counters[Counter.bytesOut] += size - 2;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsDescriptors) {
      closeQuietly(this.#readFd);
      if (this.#writeFd !== this.#readFd) closeQuietly(this.#writeFd);
    } else {
      restoreStatusFlags(this.#writeFd, this.#writeFlags);
    }
  }
}
