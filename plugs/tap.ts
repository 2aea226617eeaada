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

import { closeQuietly, Errno, errno, libc, strerror } from "../ffi/libc.ts";
import { openTap } from "../ffi/tap.ts";
import { Counter, newCounters } from "../src/counters.ts";
import { type FrameBatch, MAX_FRAME, TAILROOM } from "../src/frames.ts";
import { type Plug, PlugEnded } from "../src/plug.ts";
import { splitQuoted, VnlError } from "../src/vnl.ts";

const READ_SIZE = BigInt(MAX_FRAME + TAILROOM);

/** A plug on a TAP interface, or on any descriptor that carries one frame per read and write. */
export class TapPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  /** The interface name. */
  readonly name: string;
  readonly #fd: number;
  #closed = false;

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
  }

  receive(batch: FrameBatch, _readyMask: number): boolean {
    const counters = this.counters;
    while (batch.count < batch.capacity) {
      const i = batch.count;
      const length = Number(libc.read(this.#fd, batch.framePointers[i], READ_SIZE));
      if (length < 0) {
        const code = errno();
        if (code === Errno.EAGAIN || code === Errno.EINTR) return true;
        const EBADFD = 77; // what a read returns once the interface is gone
        throw new PlugEnded(
          code === EBADFD
            ? `tap://${this.name} was deleted`
            : `tap://${this.name} failed: ${strerror(code)}`,
        );
      }
      if (length === 0) return false;
      if (length > MAX_FRAME) {
        counters[Counter.dropTooLong]++;
        continue;
      }
      batch.lengths[i] = length;
      batch.count++;
      counters[Counter.framesIn]++;
      counters[Counter.bytesIn] += length;
    }
    return true;
  }

  send(batch: FrameBatch): void {
    const counters = this.counters;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      const written = libc.write(this.#fd, batch.framePointers[i], BigInt(length));
      if (written < 0) counters[Counter.dropSendError]++;
      else {
        counters[Counter.framesOut]++;
        counters[Counter.bytesOut] += length;
      }
    }
  }

  describe(): Record<string, unknown> {
    return { interface: this.name };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#fd);
  }
}
