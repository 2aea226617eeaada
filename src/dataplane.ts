/**
 * A data plane in a Worker, for `vdeno ns`: the worker opens both plugs and
 * runs the cable with a blocking poll, so frames are forwarded the moment
 * they arrive while the main thread waits for the namespace's command and
 * serves signals. (`vdeno plug` runs its one cable on the main thread.)
 *
 * The worker runs the program's main module again (main.ts, the bundle or the
 * compiled executable), which hands over to {@linkcode runDataPlaneWorker}
 * when it finds itself in a worker; this keeps vdeno a single file.
 *
 * Control goes through shared memory and an eventfd: the main thread sets a
 * bit in a shared word and wakes the worker's poll. Counters are shared
 * Float64Arrays that the main thread reads without asking.
 *
 * @module
 */

import { Wakeup } from "../ffi/poll.ts";
import { openPlug } from "../plugs/open.ts";
import { StreamPlug } from "../plugs/stream.ts";
import { TapPlug } from "../plugs/tap.ts";
import { type CableEnd, runCable } from "./cable.ts";
import { PcapWriter } from "./pcap.ts";
import type { Plug } from "./plug.ts";

/** One end of a cable: a VNL to open, a byte stream on descriptors, or an open TAP descriptor. */
export type EndSpec =
  | { vnl: string }
  | { stream: { name: string; readFd: number; writeFd: number; owned: boolean } }
  | { tap: { name: string; fd: number } };

/** What the main thread knows of an open plug. */
export interface PlugHandle {
  vnl: string;
  counters: Float64Array;
}

const STOP = 1;

type ToMain =
  | { type: "ready"; plugs: PlugHandle[] }
  | { type: "error"; message: string }
  | { type: "finished"; end: CableEnd };

interface WorkerStart {
  ends: EndSpec[];
  capture?: string;
  wakeupFd: number;
  commands: SharedArrayBuffer;
}

/** A running data plane. */
export class DataPlane {
  readonly plugs: PlugHandle[];
  /** Resolves once the cable ended and the worker closed both plugs (goodbye sent). */
  readonly finished: Promise<CableEnd>;
  readonly #wakeup: Wakeup;
  readonly #commands: Int32Array;

  private constructor(
    wakeup: Wakeup,
    commands: Int32Array,
    plugs: PlugHandle[],
    finished: Promise<CableEnd>,
  ) {
    this.#wakeup = wakeup;
    this.#commands = commands;
    this.plugs = plugs;
    this.finished = finished;
  }

  /**
   * Starts the worker and opens both ends; rejects with the reason an end
   * cannot open. With `capture`, every frame crossing is written to that pcap file.
   */
  static start(ends: EndSpec[], capture?: string): Promise<DataPlane> {
    const wakeup = new Wakeup();
    const commands = new Int32Array(new SharedArrayBuffer(8));
    const worker = new Worker(Deno.mainModule, { type: "module", name: "vdeno-dataplane" });
    let resolveFinished: (end: CableEnd) => void;
    const finished = new Promise<CableEnd>((resolve) => resolveFinished = resolve);
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<ToMain>) => {
        const message = event.data;
        if (message.type === "ready") {
          resolve(new DataPlane(wakeup, commands, message.plugs, finished));
        } else if (message.type === "error") {
          worker.terminate();
          wakeup.close();
          reject(new Error(message.message));
        } else if (message.type === "finished") {
          worker.terminate();
          wakeup.close();
          resolveFinished(message.end);
        }
      };
      worker.onerror = (event) => {
        event.preventDefault();
        worker.terminate();
        const reason = `the data plane failed: ${event.message}`;
        reject(new Error(reason));
        resolveFinished({ kind: "ended", plugIndex: -1, reason });
      };
      const start: WorkerStart = { ends, capture, wakeupFd: wakeup.fd, commands: commands.buffer };
      worker.postMessage(start);
    });
  }

  /** Asks the worker to close both plugs and finish. */
  stop(): void {
    Atomics.or(this.#commands, 0, STOP);
    this.#wakeup.wake();
  }
}

/** Opens one end of a cable. */
export function openEnd(end: EndSpec): Plug {
  if ("vnl" in end) return openPlug(end.vnl);
  if ("tap" in end) return new TapPlug(`tap://${end.tap.name}`, end.tap.name, end.tap.fd);
  const { name, readFd, writeFd, owned } = end.stream;
  return new StreamPlug(name, readFd, writeFd, owned);
}

/** The worker's side: called by the main module when it runs as the data plane worker. */
export function runDataPlaneWorker(): void {
  const scope = self as unknown as {
    postMessage(message: ToMain): void;
    onmessage: ((event: MessageEvent<WorkerStart>) => void) | null;
  };
  scope.onmessage = (event) => {
    scope.onmessage = null;
    const { ends, capture: capturePath, wakeupFd, commands: commandBuffer } = event.data;
    const commands = new Int32Array(commandBuffer);
    const plugs: Plug[] = [];
    let capture: PcapWriter | undefined;
    try {
      for (const end of ends) plugs.push(openEnd(end));
      if (capturePath) capture = new PcapWriter(capturePath);
    } catch (error) {
      for (const plug of plugs) plug.close();
      scope.postMessage({ type: "error", message: (error as Error).message });
      return;
    }
    scope.postMessage({
      type: "ready",
      plugs: plugs.map((plug) => ({ vnl: plug.vnl, counters: plug.counters })),
    });
    const wakeup = new Wakeup(wakeupFd);
    let end: CableEnd;
    try {
      end = runCable(plugs[0], plugs[1], {
        wakeup,
        capture,
        onWake: () => (Atomics.exchange(commands, 0, 0) & STOP) === 0,
      });
    } catch (error) {
      end = { kind: "ended", plugIndex: -1, reason: (error as Error).message };
    }
    for (const plug of plugs) plug.close();
    capture?.close();
    scope.postMessage({ type: "finished", end });
  };
}
