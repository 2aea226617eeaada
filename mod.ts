/**
 * vdeno as a library: open a VDE network from any Deno program.
 *
 * A VNL (Virtual Network Locator) names the network, with the same syntax
 * as vdeplug4: `vxvde://239.0.0.1` joins a Local Area Cloud, `tap://tap0`
 * opens a TAP interface. Frames are whole Ethernet frames as Uint8Arrays.
 *
 * Needs `--allow-net --allow-ffi`, nothing more: the data path calls libc
 * directly, and so do the lookups around it (environment, files, addresses).
 * From outside a checkout, import this file by path or file URL.
 *
 * @example Say hello to everyone on a Local Area Cloud
 * ```ts
 * import { formatMac, openVde } from "./mod.ts";
 *
 * using vde = openVde("vxvde://239.1.2.3");
 * const frame = new Uint8Array(60);
 * frame.fill(0xff, 0, 6); // broadcast destination
 * frame.set([0x02, 0, 0, 0, 0, 1], 6); // our source MAC
 * frame.set([0x88, 0xb5], 12); // local experimental EtherType
 * vde.send(frame);
 * for await (const received of vde) {
 *   console.log(`${received.length} bytes from ${formatMac(received, 6)}`);
 *   break;
 * }
 * ```
 *
 * @module
 */

import { PollSet } from "./ffi/poll.ts";
import { openPlug } from "./plugs/open.ts";
import { type CounterName, countersObject } from "./core/counters.ts";
import { FrameBatch, MAX_FRAME } from "./core/frames.ts";
import type { Plug } from "./core/plug.ts";

export { VnlError } from "./core/vnl.ts";
export { formatMac } from "./core/frames.ts";
export { schemeNames } from "./plugs/open.ts";
export type { CounterName } from "./core/counters.ts";

/** A connection to a VDE network. */
export class VdeConnection implements AsyncIterable<Uint8Array>, Disposable {
  /** The VNL it was opened with. */
  readonly vnl: string;
  readonly #plug: Plug;
  readonly #poller: PollSet;
  readonly #incoming = new FrameBatch();
  #next = 0;
  readonly #outgoing = new FrameBatch(1);
  #closed = false;

  constructor(plug: Plug) {
    this.vnl = plug.vnl;
    this.#plug = plug;
    this.#poller = new PollSet(plug.fds);
  }

  /**
   * Sends one Ethernet frame (14 to 9234 bytes).
   * @throws {RangeError} when the frame is shorter than an Ethernet header or too long
   */
  send(frame: Uint8Array): void {
    this.#assertOpen();
    if (frame.length < 14 || frame.length > MAX_FRAME) {
      throw new RangeError(
        `Cannot send a ${frame.length}-byte frame: frames have 14 to ${MAX_FRAME} bytes`,
      );
    }
    this.#outgoing.count = 0;
    this.#outgoing.timeMs = Date.now();
    this.#outgoing.push(frame);
    this.#plug.send(this.#outgoing);
  }

  /**
   * The next frame from the network (a copy the caller owns), or null once
   * the connection was closed or its input ended.
   */
  async receive(): Promise<Uint8Array | null> {
    for (;;) {
      if (this.#closed) return null;
      const batch = this.#incoming;
      while (this.#next < batch.count) {
        const i = this.#next++;
        if (batch.lengths[i] > 0) return batch.frame(i).slice();
      }
      batch.count = 0;
      this.#next = 0;
      let mask = 0;
      if (!this.#plug.backlog) {
        await this.#poller.waitAsync(200);
        if (this.#closed) return null;
        for (let i = 0; i < this.#plug.fds.length; i++) if (this.#poller.events(i)) mask |= 1 << i;
        if (mask === 0) continue;
      }
      batch.timeMs = Date.now();
      if (!this.#plug.receive(batch, mask) && batch.count === 0) return null;
    }
  }

  /** Counters of this connection: frames, bytes, and drops by reason. */
  get counters(): Record<CounterName, number> {
    return countersObject(this.#plug.counters);
  }

  /** Closes the connection (a vxvde plug says goodbye to its peers first). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#plug.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      const frame = await this.receive();
      if (frame === null) return;
      yield frame;
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error(`Cannot use ${this.vnl}: the connection is closed`);
  }
}

/**
 * Opens the VDE network named by `vnl`.
 * @param vnl e.g. `vxvde://239.0.0.1/vni=7` or `tap://tap0`
 * @returns an open connection; close it (or `using` it) when done
 * @throws {VnlError} when the VNL is malformed; Error when the network cannot be opened
 */
export function openVde(vnl: string): VdeConnection {
  return new VdeConnection(openPlug(vnl));
}
