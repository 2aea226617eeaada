/**
 * Waiting on descriptors: poll(2) over a fixed set, and an eventfd to wake a
 * waiting loop from elsewhere.
 *
 * @module
 */

import { check, Errno, errno, libc, SystemError } from "./libc.ts";

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
/** The peer closed its end (or shut down writing): for stream sockets. */
export const POLLRDHUP = 0x2000;

/** A fixed set of descriptors to wait on for input, with their last results. */
export class PollSet {
  readonly fds: readonly number[];
  readonly #entries: Uint8Array<ArrayBuffer>;
  readonly #shorts: Int16Array;
  readonly #ints: Int32Array;
  readonly #count: bigint;

  constructor(fds: readonly number[]) {
    this.fds = fds;
    this.#entries = new Uint8Array(fds.length * 8); // struct pollfd: int fd; short events, revents
    const view = new DataView(this.#entries.buffer);
    fds.forEach((fd, i) => {
      view.setInt32(i * 8, fd, true);
      view.setInt16(i * 8 + 4, POLLIN, true);
    });
    this.#shorts = new Int16Array(this.#entries.buffer);
    this.#ints = new Int32Array(this.#entries.buffer);
    this.#count = BigInt(fds.length);
  }

  /** Waits up to `timeoutMs` (-1: forever); returns how many descriptors are ready. */
  wait(timeoutMs: number): number {
    const ready = libc.poll(this.#entries, this.#count, timeoutMs);
    if (ready < 0) {
      const code = errno();
      if (code === Errno.EINTR) return 0;
      throw new SystemError("poll", code);
    }
    return ready;
  }

  /** Like {@linkcode wait}, on a thread of its own so the event loop goes on meanwhile. */
  async waitAsync(timeoutMs: number): Promise<number> {
    const ready = await libc.poll_nonblocking(this.#entries, this.#count, timeoutMs);
    return ready < 0 ? 0 : ready;
  }

  /**
   * Makes entry i wait on `fd` for `events`; a negative fd makes poll skip
   * the entry (and report nothing for it).
   */
  setEntry(i: number, fd: number, events: number): void {
    const shorts = this.#shorts;
    this.#ints[i * 2] = fd;
    shorts[i * 4 + 2] = events;
    shorts[i * 4 + 3] = 0;
  }

  /** The events that descriptor i reported in the last wait. */
  events(i: number): number {
    return this.#shorts[i * 4 + 3];
  }
}

/**
 * A timerfd that becomes readable `firstMs` milliseconds from now (at once for 0) and then every
 * `periodMs` milliseconds, until closed.
 */
export class Ticker {
  readonly fd: number;
  readonly #expirations = new Uint8Array(8);

  constructor(periodMs: number, firstMs = periodMs) {
    const CLOCK_MONOTONIC = 1, TFD_NONBLOCK = 0o4000, TFD_CLOEXEC = 0o2000000;
    this.fd = check(libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), "timerfd");
    // struct itimerspec: the interval, then the first expiration, each as seconds and nanoseconds
    // (a first expiration of zero would disarm the timer: one nanosecond stands for "at once").
    const timespec = (ms: number) => [BigInt(Math.floor(ms / 1000)), BigInt((ms % 1000) * 1e6)];
    const first = firstMs > 0 ? timespec(firstMs) : [0n, 1n];
    const spec = new BigInt64Array([...timespec(periodMs), ...first]);
    const set = libc.timerfd_settime(this.fd, 0, new Uint8Array(spec.buffer), null);
    if (set < 0) {
      const code = errno();
      libc.close(this.fd);
      throw new SystemError("timerfd_settime", code);
    }
  }

  /** Consumes the expirations, so that the descriptor is no longer readable. */
  acknowledge(): void {
    libc.read(this.fd, Deno.UnsafePointer.of(this.#expirations), 8n);
  }

  close(): void {
    libc.close(this.fd);
  }
}

/** An eventfd: a counter another part of the program writes to wake a poll. */
export class Wakeup {
  readonly fd: number;
  readonly #word = new BigUint64Array(1);
  readonly #bytes = new Uint8Array(this.#word.buffer);

  constructor() {
    const EFD_NONBLOCK = 0o4000, EFD_CLOEXEC = 0o2000000;
    this.fd = check(libc.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd");
  }

  /** Makes the descriptor readable. */
  wake(): void {
    this.#word[0] = 1n;
    libc.write(this.fd, Deno.UnsafePointer.of(this.#bytes), 8n);
  }

  /** Consumes the wake-ups, so that the descriptor is no longer readable. */
  acknowledge(): void {
    libc.read(this.fd, Deno.UnsafePointer.of(this.#bytes), 8n);
  }

  close(): void {
    libc.close(this.fd);
  }
}
