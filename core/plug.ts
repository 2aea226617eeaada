/**
 * The one interface every VNL scheme implements, as vdeplug4's modules do:
 * open (the scheme's factory), the descriptors to wait on, receive, send,
 * close. The cable that moves frames between two plugs knows only this.
 *
 * @module
 */

import type { FrameBatch } from "./frames.ts";

/** An open connection to a virtual network. */
export interface Plug {
  /** The VNL it was opened with. */
  readonly vnl: string;
  /** Descriptors to wait on for input, in a fixed order. */
  readonly fds: readonly number[];
  /** Counters; see `counters.ts` for their meaning. */
  readonly counters: Float64Array;
  /**
   * Appends every frame that is ready, without blocking, to `batch` (from
   * `batch.count` up to its capacity). `readyMask` has bit i set when fds[i]
   * was reported readable. A slot whose length is 0 was dropped and is to be
   * skipped. Returns false when the plug has ended (its peer closed).
   */
  receive(batch: FrameBatch, readyMask: number): boolean;
  /**
   * True when input was read but not yet delivered; the cable calls receive again with the same
   * ready mask on its next turn, after the other plug's, without waiting in the poll.
   */
  readonly backlog?: boolean;
  /**
   * The largest frame this plug sends without its network fragmenting it, when
   * it knows (a vxvde plug: the route's MTU less the encapsulation).
   */
  readonly largestWholeFrame?: number;
  /**
   * Asks a plug that cuts super-frames into segments (a TAP with offloads) to
   * cut them no larger than `size` bytes, so that the other plug of the cable
   * sends them whole.
   */
  fitSegmentsTo?(size: number): void;
  /**
   * True when `receive` may leave the segments of a super-frame split, their
   * payloads where it read them (`FrameBatch.heads`), if the batch allows it
   * (`FrameBatch.mayLeaveSplit`).
   */
  readonly leavesFramesSplit?: boolean;
  /** True when `send` sends split frames as they are: the cable lets the other plug leave them so. */
  readonly sendsSplitFrames?: boolean;
  /**
   * True when `send` takes held frames (`FrameBatch.held`: a TCP super-frame whose payload stays
   * where it arrived): a TAP with offloads writes them as they are.
   */
  readonly takesHeldFrames?: boolean;
  /**
   * Asks a plug to hand over the TCP segments it receives in runs as held frames, where it can,
   * because the other plug of the cable takes them (and nothing else reads the batch).
   */
  holdFrames?(): void;
  /**
   * Sends the frames in slots [0, batch.count), skipping those of length 0.
   * It never blocks: what does not fit is dropped and counted, except the rest
   * of a frame a stream took only part of, which waits in `pendingOutput`.
   */
  send(batch: FrameBatch): void;
  /** The descriptor `send` writes to, for plugs that keep a remainder in `pendingOutput`. */
  readonly outputFd?: number;
  /**
   * True while the rest of a partly written frame waits: the cable then waits
   * for `outputFd` to turn writable and calls `flush`.
   */
  readonly pendingOutput?: boolean;
  /** Writes what waits in `pendingOutput`, as far as it goes without blocking. */
  flush?(): void;
  /**
   * Runs the plug's own receive and send on synthetic frames, through
   * descriptors it opens and drains for the purpose, so that V8 has compiled
   * the data path before the first real frame. Nothing reaches the network,
   * and the counters, the MAC table and whatever else a user sees stay as
   * they were. Returns how many frames went through each way.
   */
  warmUp?(batch: FrameBatch): WarmUpResult;
  /**
   * Puts the plug in its warm-up state for the cable to run on synthetic
   * frames: descriptors of its own in place of the plug's (nothing reaches
   * the network), scratch counters and tables. Until `end`, the cable polls
   * `fds` instead of `Plug.fds` and calls `receive` and `send` as for
   * traffic. Undefined when the plug cannot warm up.
   */
  startWarmUp?(batch: FrameBatch): WarmUpState | undefined;
  /** Details for `vdeno status`: learned addresses, peers, anything the scheme knows. */
  describe?(): Record<string, unknown>;
  /**
   * Re-reads what the plug read when it opened and may change while it runs
   * (a vxvde plug's `key=`), for `vdeno reload`; returns what happened, in words.
   */
  reload?(): string;
  /** Releases everything; a vxvde plug says goodbye first. */
  close(): void;
}

/** How many synthetic frames a warm-up moved through a plug, each way. */
export interface WarmUpResult {
  framesIn: number;
  framesOut: number;
  /** Of those out, how many went in pieces (a keyed network's longest frames). */
  framesCut?: number;
}

/** A plug in its warm-up state (`Plug.startWarmUp`). */
export interface WarmUpState {
  /** The descriptors that stand for `Plug.fds` meanwhile, in the same order. */
  readonly fds: readonly number[];
  /**
   * Puts round `round`'s synthetic input where the plug reads it: what
   * traffic starts with (a broadcast, pings), TCP super-frames, and now and
   * then more than a batch holds, so that the plug keeps a backlog.
   */
  feed(round: number): void;
  /** Reads and discards what the plug sent meanwhile. */
  drain(): void;
  /** Gives the plug back its descriptors, counters and tables; says what went through. */
  end(): WarmUpResult;
}

/** The end of a plug's input: its peer closed, or its device went away. */
export class PlugEnded extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PlugEnded";
  }
}
