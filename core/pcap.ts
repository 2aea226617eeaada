/**
 * Writing frames to a pcap file (the classic format: Wireshark, tshark and
 * tcpdump read it), one write per batch.
 *
 * @module
 */

import type { FrameBatch } from "./frames.ts";

const RECORD_HEADER = 16;
const FILE_HEADER = 24;
const LINKTYPE_ETHERNET = 1;
const SNAPLEN = 262144;

/** A pcap file open for appending frames. */
export class PcapWriter {
  readonly path: string;
  readonly #file: Deno.FsFile;
  readonly #buffer = new Uint8Array(1 << 20);
  readonly #view = new DataView(this.#buffer.buffer);
  #used = 0;
  #closed = false;

  constructor(path: string) {
    this.path = path;
    try {
      this.#file = Deno.openSync(path, { write: true, create: true, truncate: true });
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
    let written = 0;
    while (written < this.#used) {
      written += this.#file.writeSync(this.#buffer.subarray(written, this.#used));
    }
    this.#used = 0;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.flush();
    this.#file.close();
  }
}
