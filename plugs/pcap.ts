/**
 * `pcap://FILE`: a plug that records every frame sent to it in a pcap file
 * and sends nothing back. `vdeno plug vxvde://239.0.0.1 pcap://lan.pcap`
 * captures what a Local Area Cloud carries.
 *
 * @module
 */

import { Counter, newCounters } from "../core/counters.ts";
import type { FrameBatch } from "../core/frames.ts";
import { PcapWriter } from "../core/pcap.ts";
import type { Plug } from "../core/plug.ts";
import { splitQuoted, VnlError } from "../core/vnl.ts";

export class PcapPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[] = [];
  readonly counters: Float64Array = newCounters();
  readonly #writer: PcapWriter;

  constructor(vnl: string, rest: string) {
    this.vnl = vnl;
    const [path] = splitQuoted(rest, "");
    if (path === "") {
      throw new VnlError("Missing file name: use pcap://FILE, e.g. pcap:///tmp/lan.pcap");
    }
    this.#writer = new PcapWriter(path);
  }

  receive(_batch: FrameBatch, _readyMask: number): boolean {
    return true;
  }

  send(batch: FrameBatch): void {
    this.#writer.writeBatch(batch);
    for (let i = 0; i < batch.count; i++) {
      if (batch.lengths[i] === 0) continue;
      this.counters[Counter.framesOut]++;
      this.counters[Counter.bytesOut] += batch.lengths[i];
    }
  }

  describe(): Record<string, unknown> {
    return { file: this.#writer.path };
  }

  close(): void {
    this.#writer.close();
  }
}
