/**
 * `null://`: a network that sends nothing and drops everything sent to it, as
 * vdeplug4's null module. `vdeno plug null:// switch:///tmp/sw` runs a switch
 * with no port of its own; `vdeno ns null://` gives an interface on nothing.
 *
 * @module
 */

import { Counter, newCounters } from "../core/counters.ts";
import type { FrameBatch } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";
import { VnlError } from "../core/vnl.ts";

export class NullPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[] = [];
  readonly counters: Float64Array = newCounters();

  constructor(vnl: string, rest: string) {
    if (rest !== "") throw new VnlError(`null:// takes nothing after it: ${vnl}`);
    this.vnl = vnl;
  }

  receive(_batch: FrameBatch, _readyMask: number): boolean {
    return true;
  }

  send(batch: FrameBatch): void {
    for (let i = 0; i < batch.count; i++) {
      if (batch.lengths[i] === 0) continue;
      this.counters[Counter.framesOut]++;
      this.counters[Counter.bytesOut] += batch.lengths[i];
    }
  }

  close(): void {}
}
