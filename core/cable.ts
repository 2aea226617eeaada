/**
 * The cable: moves frames both ways between two plugs, like `vde_plug A B`.
 *
 * One poll over every descriptor of both plugs, those the caller watches (a
 * control socket, a signalfd, a stop eventfd) and a once-a-second timer for
 * the batch's clock; each wake-up drains a batch from each ready plug into the
 * other. The poll blocks for as long as nothing happens, so a frame is
 * forwarded the moment it arrives. It never returns to the event loop until
 * it ends: whatever must reach it comes as a readable descriptor.
 *
 * @module
 */

import { POLLERR, POLLHUP, POLLIN, POLLOUT, PollSet, Ticker } from "../ffi/poll.ts";
import { CLOCK_LAG_MS, FrameBatch } from "./frames.ts";
import { log } from "./log.ts";
import type { PcapWriter } from "./pcap.ts";
import type { Plug } from "./plug.ts";

/** How a cable ended. */
export type CableEnd =
  | { kind: "stopped" }
  | { kind: "ended"; plugIndex: number; reason: string };

/** Options of {@linkcode runCable}. */
export interface CableOptions {
  /**
   * More descriptors to wait on (a control socket, a signalfd, a stop
   * eventfd): `onReady` runs when one is readable; it returns false to stop
   * the cable.
   */
  watch?: { fds: readonly number[]; onReady: (fd: number) => boolean };
  /** Records every frame that crosses the cable, both ways. */
  capture?: PcapWriter;
}

const READY = POLLIN | POLLHUP | POLLERR;
/** How many wake-ups `serve` handles before it returns to the loop that calls it. */
const WAKE_UPS_PER_CALL = 256;

/** Runs the cable until `watch.onReady` says stop or a plug ends. */
export function runCable(a: Plug, b: Plug, options: CableOptions): CableEnd {
  const plugs = [a, b];
  if (b.largestWholeFrame) a.fitSegmentsTo?.(b.largestWholeFrame);
  if (a.largestWholeFrame) b.fitSegmentsTo?.(a.largestWholeFrame);
  const firstFd = [0, a.fds.length];
  const watched = options.watch?.fds ?? [];
  // The clock is read on a tick of its own, never on a wake-up that carries frames (its cost right
  // after a sleep: bench/README.md); the first tick comes at once, so V8 sees its branch early.
  const ticker = new Ticker(CLOCK_LAG_MS, 0);
  // Plugs with output that may wait (streams) get an entry each, polled for writability only
  // while a remainder waits: a reader that stops reading must never stop the cable.
  const writers = plugs.map((plug, p) => ({ plug, p })).filter(({ plug }) =>
    plug.outputFd !== undefined
  );
  const poller = new PollSet([...a.fds, ...b.fds, ...watched, ticker.fd, ...writers.map(() => -1)]);
  const watchIndex = a.fds.length + b.fds.length;
  const tickerIndex = watchIndex + watched.length;
  const writerIndex = tickerIndex + 1;
  const batch = new FrameBatch();
  /** Per plug, the ready mask of a receive that left input behind (`Plug.backlog`), else 0. */
  const backlogMasks = [0, 0];
  for (const plug of plugs) {
    if (!plug.warmUp) continue;
    const started = performance.now();
    const { framesIn, framesOut } = plug.warmUp(batch);
    const ms = (performance.now() - started).toFixed(1);
    log(
      "debug",
      `${plug.vnl}: warm-up moved ${framesIn} frames in and ${framesOut} out in ${ms} ms`,
    );
  }
  // The wake-ups run in a function this loop calls, so that V8 optimizes it again after a
  // deoptimization; a loop here would stay interpreted (bench/README.md).
  const serve = (): CableEnd | undefined => {
    for (let wakeUps = 0; wakeUps < WAKE_UPS_PER_CALL; wakeUps++) {
      for (let w = 0; w < writers.length; w++) {
        const plug = writers[w].plug;
        poller.setEntry(writerIndex + w, plug.pendingOutput ? plug.outputFd! : -1, POLLOUT);
      }
      // A plug with input read but not delivered takes turns with the other, a batch each, and
      // the poll only looks: a long run must not hold up what the other side has to say.
      const waiting = backlogMasks[0] | backlogMasks[1];
      if (poller.wait(waiting === 0 ? -1 : 0) <= 0 && waiting === 0) continue;
      for (let w = 0; w < writers.length; w++) {
        if (poller.events(writerIndex + w) === 0) continue;
        try {
          writers[w].plug.flush?.();
        } catch (error) {
          return { kind: "ended", plugIndex: writers[w].p, reason: (error as Error).message };
        }
      }
      for (let p = 0; p < 2; p++) {
        const plug = plugs[p];
        let mask = backlogMasks[p];
        backlogMasks[p] = 0;
        for (let f = 0; f < plug.fds.length; f++) {
          if (poller.events(firstFd[p] + f) & READY) mask |= 1 << f;
        }
        if (mask === 0) continue;
        const other = plugs[1 - p];
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
        if (plug.backlog) backlogMasks[p] = mask;
      }
      // The watched descriptors and the clock wait until no backlog is left (the poll reports
      // them again), so that a stop or a query comes after the input already read.
      if ((backlogMasks[0] | backlogMasks[1]) !== 0) continue;
      for (let w = 0; w < watched.length; w++) {
        if (poller.events(watchIndex + w) && !options.watch!.onReady(watched[w])) {
          return { kind: "stopped" };
        }
      }
      if (poller.events(tickerIndex)) {
        ticker.acknowledge();
        batch.timeMs = Date.now();
      }
    }
  };
  try {
    for (;;) {
      const end = serve();
      if (end) return end;
    }
  } finally {
    ticker.close();
  }
}
