/**
 * The cable: moves frames both ways between two plugs, like `vde_plug A B`.
 *
 * One poll over every descriptor of both plugs plus a wake-up eventfd; each
 * wake-up drains a batch from each ready plug into the other. In the data
 * plane worker the poll blocks for as long as nothing happens, so a frame is
 * forwarded the moment it arrives; on a thread that must serve its event loop
 * too, pass `cooperative` and the cable yields between short waits.
 *
 * @module
 */

import { POLLERR, POLLHUP, POLLIN, PollSet, type Wakeup } from "../ffi/poll.ts";
import { FrameBatch } from "./frames.ts";
import type { PcapWriter } from "./pcap.ts";
import type { Plug } from "./plug.ts";

/** How a cable ended. */
export type CableEnd =
  | { kind: "stopped" }
  | { kind: "ended"; plugIndex: number; reason: string };

/** Options of {@linkcode runCable}. */
export interface CableOptions {
  /** Made readable by whoever wants the cable's attention. */
  wakeup: Wakeup;
  /** Called after the wakeup fired; return false to stop the cable. */
  onWake: () => boolean;
  /** Yield to the event loop between waits (for use on the main thread). */
  cooperative?: boolean;
  /** Records every frame that crosses the cable, both ways. */
  capture?: PcapWriter;
}

const READY = POLLIN | POLLHUP | POLLERR;
const COOPERATIVE_WAIT_MS = 50;

/** Runs the cable until `onWake` says stop or a plug ends. */
export async function runCable(a: Plug, b: Plug, options: CableOptions): Promise<CableEnd> {
  const plugs = [a, b];
  const firstFd = [0, a.fds.length];
  const poller = new PollSet([...a.fds, ...b.fds, options.wakeup.fd]);
  const wakeupIndex = a.fds.length + b.fds.length;
  const batch = new FrameBatch();
  const timeout = options.cooperative ? COOPERATIVE_WAIT_MS : -1;
  for (;;) {
    const ready = poller.wait(timeout);
    if (ready > 0) {
      for (let p = 0; p < 2; p++) {
        const plug = plugs[p];
        let mask = 0;
        for (let f = 0; f < plug.fds.length; f++) {
          if (poller.events(firstFd[p] + f) & READY) mask |= 1 << f;
        }
        if (mask === 0) continue;
        const other = plugs[1 - p];
        do {
          batch.count = 0;
          let open: boolean;
          try {
            open = plug.receive(batch, mask);
          } catch (error) {
            return { kind: "ended", plugIndex: p, reason: (error as Error).message };
          }
          if (batch.count > 0) {
            options.capture?.writeBatch(batch);
            try {
              other.send(batch);
            } catch (error) {
              return { kind: "ended", plugIndex: 1 - p, reason: (error as Error).message };
            }
          }
          if (!open) return { kind: "ended", plugIndex: p, reason: "end of input" };
        } while (plug.backlog);
      }
      if (poller.events(wakeupIndex)) {
        options.wakeup.clear();
        if (!options.onWake()) return { kind: "stopped" };
      }
    }
    if (options.cooperative) await new Promise<void>((resolve) => setTimeout(resolve, 0));
  }
}
