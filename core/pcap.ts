/**
 * Writing frames to a pcap file (the classic format: Wireshark, tshark and
 * tcpdump read it), one write per batch.
 *
 * @module
 */

import { closeQuietly } from "../ffi/libc.ts";
import { createPrivateFile, writeFully } from "../ffi/os.ts";
import type { FrameBatch } from "./frames.ts";

const RECORD_HEADER = 16;
const FILE_HEADER = 24;
const LINKTYPE_ETHERNET = 1;
const SNAPLEN = 262144;

/**
 * A pcap file open for appending frames. It is created mode 0600 (the frames
 * of a keyed network are decrypted in it) and never through a symbolic link.
 */
export class PcapWriter {
  readonly path: string;
  readonly #fd: number;
  readonly #buffer = new Uint8Array(1 << 20);
  readonly #view = new DataView(this.#buffer.buffer);
  #used = 0;
  #closed = false;

  constructor(path: string) {
    this.path = path;
    try {
      this.#fd = createPrivateFile(path);
    } catch (error) {
      throw new Error(`Cannot write capture file ${path}: ${(error as Error).message}`);
    }
    const view = this.#view;
    view.setUint32(0, 0xa1b2c3d4, true);
    view.setUint16(4, 2, true);
    view.setUint16(6, 4, true);
    view.setUint32(16, SNAPLEN, true);
    view.setUint32(20, LINKTYPE_ETHERNET, true);
    this.#used = FILE_HEADER;
    this.flush();
  }

  /** Appends the frames of `batch` (skipping dropped slots) with the current time. */
  writeBatch(batch: FrameBatch): void {
    const now = Date.now();
    const seconds = Math.floor(now / 1000), micros = (now % 1000) * 1000;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      if (this.#used + RECORD_HEADER + length > this.#buffer.length) this.flush();
      const at = this.#used;
      this.#view.setUint32(at, seconds, true);
      this.#view.setUint32(at + 4, micros, true);
      this.#view.setUint32(at + 8, length, true);
      this.#view.setUint32(at + 12, length, true);
      const start = batch.offset(i);
      this.#buffer.set(batch.bytes.subarray(start, start + length), at + RECORD_HEADER);
      this.#used = at + RECORD_HEADER + length;
    }
    this.flush();
  }

  /** Writes out what is buffered. */
  flush(): void {
    writeFully(this.#fd, this.#buffer.subarray(0, this.#used), this.path);
    this.#used = 0;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.flush();
    } finally {
      closeQuietly(this.#fd);
    }
  }
}
