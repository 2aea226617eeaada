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
import { Counter } from "./counters.ts";
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
  /** The clock's ticker, or while the cable warms up one of its own that ticks more often. */
  let ticking = ticker;
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
  // Per plug, whether what it receives may stay split for the other to send: frames captured
  // are written whole.
  const leaveSplit = plugs.map((plug, p) =>
    plug.leavesFramesSplit === true && plugs[1 - p].sendsSplitFrames === true && !options.capture
  );
  /** Per plug, the ready mask of a receive that left input behind (`Plug.backlog`), else 0. */
  const backlogMasks = [0, 0];
  for (const plug of plugs) {
    if (!plug.warmUp) continue;
    const started = performance.now();
    const { framesIn, framesOut, framesCut } = plug.warmUp(batch);
    const ms = (performance.now() - started).toFixed(1);
    const cut = framesCut ? ` (${framesCut} in pieces)` : "";
    log(
      "debug",
      `${plug.vnl}: warm-up moved ${framesIn} frames in and ${framesOut} out${cut} in ${ms} ms`,
    );
  }
  /** The poll's timeout while no backlog waits: none, but 0 while the cable warms up. */
  let idleTimeout = -1;
  let wakeUpsPerCall = WAKE_UPS_PER_CALL;
  /** Where captured frames go; none while the cable warms up. */
  let capture: PcapWriter | undefined;
  // The wake-ups run in a function this loop calls, so that V8 optimizes it again after a
  // deoptimization; a loop here would stay interpreted (bench/README.md).
  const serve = (): CableEnd | undefined => {
    for (let wakeUps = 0; wakeUps < wakeUpsPerCall; wakeUps++) {
      for (let w = 0; w < writers.length; w++) {
        const plug = writers[w].plug;
        poller.setEntry(writerIndex + w, plug.pendingOutput ? plug.outputFd! : -1, POLLOUT);
      }
      // A plug with input read but not delivered takes turns with the other, a batch each, and
      // the poll only looks: a long run must not hold up what the other side has to say.
      const waiting = backlogMasks[0] | backlogMasks[1];
      if (poller.wait(waiting === 0 ? idleTimeout : 0) <= 0 && waiting === 0) continue;
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
        batch.splitFrames = 0;
        batch.mayLeaveSplit = leaveSplit[p];
        let open: boolean;
        try {
          open = plug.receive(batch, mask);
        } catch (error) {
          return { kind: "ended", plugIndex: p, reason: (error as Error).message };
        }
        if (batch.count > 0) {
          capture?.writeBatch(batch);
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
        ticking.acknowledge();
        batch.timeMs = Date.now();
      }
    }
  };
  try {
    warmUpCable(plugs, batch, {
      serve,
      backlogMasks,
      setWarming: (fds) => {
        // Meanwhile the plugs' own descriptors and the watched ones wait: what they say is for the
        // loop that serves traffic.
        for (let p = 0; p < 2; p++) {
          const plugFds = plugs[p].fds;
          for (let f = 0; f < plugFds.length; f++) {
            poller.setEntry(firstFd[p] + f, fds ? fds[p][f] ?? -1 : plugFds[f], POLLIN);
          }
        }
        for (let w = 0; w < watched.length; w++) {
          poller.setEntry(watchIndex + w, fds ? -1 : watched[w], POLLIN);
        }
        // The clock's branch is taken, with V8 watching, at the warm-up's own tick.
        if (fds) ticking = new Ticker(WARM_UP_TICK_MS);
        else if (ticking !== ticker) {
          ticking.close();
          ticking = ticker;
        }
        poller.setEntry(tickerIndex, ticking.fd, POLLIN);
        idleTimeout = fds ? 0 : -1;
        wakeUpsPerCall = fds ? 1 : WAKE_UPS_PER_CALL;
      },
    });
    capture = options.capture;
    // After the warm-up, whose runs are to leave backlogs that take turns. A capture reads every
    // frame whole, which a held frame is not.
    if (!capture) {
      if (b.takesHeldFrames) a.holdFrames?.();
      if (a.takesHeldFrames) b.holdFrames?.();
    }
    for (;;) {
      const end = serve();
      if (end) return end;
    }
  } finally {
    ticker.close();
  }
}

/** How many rounds of synthetic input the cable runs through both plugs before traffic. */
export const CABLE_WARM_UP_ROUNDS = 200;
/** The period of the clock's stand-in while the cable warms up. */
const WARM_UP_TICK_MS = 5;
/** The most wake-ups per round of the cable's warm-up: enough for a backlog to take its turns. */
const WARM_UP_WAKE_UPS = 12;

/** What {@linkcode warmUpCable} needs of the cable it warms. */
interface CableParts {
  serve: () => CableEnd | undefined;
  backlogMasks: number[];
  /**
   * With each plug's warm-up descriptors: makes `serve` poll those, without waiting, and return
   * after each wake-up; without: as for traffic.
   */
  setWarming: (fds?: readonly (readonly number[])[]) => void;
}

/**
 * Runs the cable's own wake-ups over both plugs in their warm-up state
 * (`Plug.startWarmUp`), so that V8 has compiled them, every branch taken (a
 * lone frame, a batch, a backlog taking turns, the clock's tick), before the
 * first real frame. Only when both plugs can warm up: a plug that cannot
 * would get synthetic frames on its real descriptors.
 */
function warmUpCable(plugs: readonly Plug[], batch: FrameBatch, cable: CableParts): void {
  if (!plugs[0].startWarmUp || !plugs[1].startWarmUp) return;
  const started = performance.now();
  const states = plugs.map((plug) => plug.startWarmUp!(batch));
  let wakeUps = 0, backlogTurns = 0;
  try {
    if (!states[0] || !states[1]) return;
    cable.setWarming([states[0].fds, states[1].fds]);
    for (let round = 0; round < CABLE_WARM_UP_ROUNDS; round++) {
      states[0].feed(round);
      states[1].feed(round);
      // Wake-ups until one finds nothing to move (the scratch counters stand still).
      for (let k = 0; k < WARM_UP_WAKE_UPS; k++) {
        const before = plugs[0].counters[Counter.framesIn] + plugs[1].counters[Counter.framesIn];
        if (cable.serve()) return;
        wakeUps++;
        if ((cable.backlogMasks[0] | cable.backlogMasks[1]) !== 0) backlogTurns++;
        else if (
          plugs[0].counters[Counter.framesIn] + plugs[1].counters[Counter.framesIn] === before
        ) break;
      }
      states[0].drain();
      states[1].drain();
    }
  } catch {
    // A cable that cannot warm up only starts slower.
  } finally {
    cable.setWarming();
    cable.backlogMasks[0] = cable.backlogMasks[1] = 0;
    const moved = states.map((state) => state?.end());
    batch.timeMs = Date.now();
    batch.count = 0;
    const ms = (performance.now() - started).toFixed(1);
    log(
      "debug",
      `cable warm-up: ${wakeUps} wake-ups, ${backlogTurns} with a backlog taking turns, ` +
        `${moved[0]?.framesIn ?? 0} frames in from ${plugs[0].vnl} and ` +
        `${moved[1]?.framesIn ?? 0} from ${plugs[1].vnl} in ${ms} ms`,
    );
    // The warm-up's garbage is collected now (with `gc()` where the runtime exposes it, as a
    // plug's does), not in a pause among the first frames; and V8 compiles what the warm-up made
    // hot on threads of its own, finishing after it: the cable stands still meanwhile, so that
    // the compiler does not take the CPU from the first frames (bench/README.md). Frames that
    // come meanwhile wait in the queues.
    if (wakeUps > 0) {
      (globalThis as { gc?: () => void }).gc?.();
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, SETTLE_MS);
    }
  }
}

/** How long the cable waits after its warm-up for V8's compiler threads to finish. */
const SETTLE_MS = 100;
