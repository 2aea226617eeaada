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
 * The only thing the main thread ever asks is to stop: it makes an eventfd
 * readable, which the worker's poll watches.
 *
 * @module
 */

import { Wakeup } from "../ffi/poll.ts";
import { type EndSpec, openEnd } from "../plugs/open.ts";
import { type CableEnd, runCable } from "../core/cable.ts";
import type { Plug } from "../core/plug.ts";
import { type LogLevel, logLevel, setLogLevel } from "../core/log.ts";
import { cableReport, ControlServer, type NamespaceInfo, reloadPlugs } from "./control.ts";

/** A plug of the data plane as the main thread sees it: its counters are shared, not copied. */
export interface PlaneCounters {
  vnl: string;
  counters: Float64Array;
}

type ToMain =
  | { type: "ready"; plugs: PlaneCounters[] }
  | { type: "error"; message: string }
  | { type: "finished"; end: CableEnd };

interface WorkerStart {
  ends: EndSpec[];
  stopFd: number;
  control?: PlaneControl;
  logLevel: LogLevel;
}

/** How a data plane answers `vdeno status`: its name and the namespace it serves. */
export interface PlaneControl {
  name: string;
  namespace: NamespaceInfo;
}

/** A running data plane. */
export class DataPlane {
  /** Resolves once the cable ended and the worker closed both plugs (goodbye sent). */
  readonly finished: Promise<CableEnd>;
  /** Both plugs' counters, shared with the worker that updates them. */
  readonly plugs: readonly PlaneCounters[];
  readonly #stop: Wakeup;

  private constructor(stop: Wakeup, finished: Promise<CableEnd>, plugs: PlaneCounters[]) {
    this.#stop = stop;
    this.finished = finished;
    this.plugs = plugs;
  }

  /**
   * Starts the worker and opens both ends, with a control socket when
   * `control` is given; rejects with the reason an end cannot open.
   */
  static start(ends: EndSpec[], control?: PlaneControl): Promise<DataPlane> {
    const stop = new Wakeup();
    const worker = new Worker(Deno.mainModule, { type: "module", name: "vdeno-dataplane" });
    let resolveFinished: (end: CableEnd) => void;
    const finished = new Promise<CableEnd>((resolve) => resolveFinished = resolve);
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<ToMain>) => {
        const message = event.data;
        if (message.type === "ready") {
          resolve(new DataPlane(stop, finished, message.plugs));
        } else if (message.type === "error") {
          worker.terminate();
          stop.close();
          reject(new Error(message.message));
        } else if (message.type === "finished") {
          worker.terminate();
          stop.close();
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
      const start: WorkerStart = { ends, stopFd: stop.fd, control, logLevel: logLevel() };
      worker.postMessage(start);
    });
  }

  /** Asks the worker to close both plugs and finish. */
  stop(): void {
    this.#stop.wake();
  }
}

/** The worker's side: called by the main module when it runs as the data plane worker. */
export function runDataPlaneWorker(): void {
  const scope = self as unknown as {
    postMessage(message: ToMain): void;
    onmessage: ((event: MessageEvent<WorkerStart>) => void) | null;
  };
  scope.onmessage = (event) => {
    scope.onmessage = null;
    const { ends, stopFd, control: controlAs } = event.data;
    setLogLevel(event.data.logLevel);
    const plugs: Plug[] = [];
    let control: ControlServer | undefined;
    try {
      for (const end of ends) plugs.push(openEnd(end));
      if (controlAs) {
        const startedAt = new Date();
        control = ControlServer.start(
          controlAs.name,
          () => cableReport(controlAs.name, startedAt, plugs, controlAs.namespace),
          () => reloadPlugs(controlAs.name, plugs),
        );
      }
    } catch (error) {
      for (const plug of plugs) plug.close();
      scope.postMessage({ type: "error", message: (error as Error).message });
      return;
    }
    scope.postMessage({
      type: "ready",
      plugs: plugs.map((plug) => ({ vnl: plug.vnl, counters: plug.counters })),
    });
    let end: CableEnd;
    try {
      const server = control;
      end = runCable(plugs[0], plugs[1], {
        watch: {
          fds: server ? [stopFd, server.fd] : [stopFd],
          // The stop eventfd is only ever written to ask for the end.
          onReady: (fd) => {
            if (fd !== server?.fd) return false;
            server.serve();
            return true;
          },
        },
      });
    } catch (error) {
      end = { kind: "ended", plugIndex: -1, reason: (error as Error).message };
    }
    for (const plug of plugs) plug.close();
    control?.close();
    scope.postMessage({ type: "finished", end });
  };
}
