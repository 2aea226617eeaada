/**
 * A data plane for `vdeno ns`: a cable between a VNL and a TAP, with its
 * control socket. With one VNL it runs on the main thread
 * ({@linkcode ThreadPlane}), whose poll also waits for the namespace's helper
 * and for signals; with more, each runs in a Worker ({@linkcode DataPlane}),
 * which opens both plugs and runs the cable with a blocking poll, so frames
 * are forwarded the moment they arrive while the main thread waits for the
 * namespace's command and serves signals.
 *
 * The worker runs the program's main module again (main.ts, the bundle or the
 * compiled executable), which hands over to {@linkcode runDataPlaneWorker}
 * when it finds itself in a worker; this keeps vdeno a single file.
 *
 * The only thing the main thread ever asks a worker is to stop: it makes an
 * eventfd readable, which the worker's poll watches.
 *
 * @module
 */

import { Wakeup } from "../ffi/poll.ts";
import { type EndSpec, openEnd } from "../plugs/open.ts";
import { closeQuietly } from "../ffi/libc.ts";
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

/**
 * A data plane run by the calling thread: both plugs and the control socket,
 * open; {@linkcode run} forwards until a plug ends or a watched descriptor
 * says stop.
 */
export class ThreadPlane {
  /** Both plugs: the first end's, then the second's. */
  readonly plugs: readonly Plug[];
  readonly #control: ControlServer | undefined;
  #closed = false;

  private constructor(plugs: Plug[], control: ControlServer | undefined) {
    this.plugs = plugs;
    this.#control = control;
  }

  /**
   * Opens both ends, and a control socket when `control` is given; throws the
   * reason an end cannot open, having closed what it opened and the
   * descriptor of a TAP end (which belongs to the plane once handed over).
   */
  static open(ends: EndSpec[], control?: PlaneControl): ThreadPlane {
    const plugs: Plug[] = [];
    try {
      for (const end of ends) plugs.push(openEnd(end));
      if (!control) return new ThreadPlane(plugs, undefined);
      const startedAt = new Date();
      return new ThreadPlane(
        plugs,
        ControlServer.start(
          control.name,
          () => cableReport(control.name, startedAt, plugs, control.namespace),
          () => reloadPlugs(control.name, plugs),
        ),
      );
    } catch (error) {
      for (const plug of plugs) plug.close();
      for (const end of ends.slice(plugs.length)) if ("tap" in end) closeQuietly(end.tap.fd);
      throw error;
    }
  }

  /**
   * Runs the cable, answering the control socket, until a plug ends or
   * `watch.onReady` returns false for one of `watch.fds` (then "stopped").
   */
  run(watch: { fds: readonly number[]; onReady: (fd: number) => boolean }): CableEnd {
    const server = this.#control;
    try {
      return runCable(this.plugs[0], this.plugs[1], {
        watch: {
          fds: server ? [server.fd, ...watch.fds] : watch.fds,
          onReady: (fd) => {
            if (fd !== server?.fd) return watch.onReady(fd);
            server.serve();
            return true;
          },
        },
      });
    } catch (error) {
      return { kind: "ended", plugIndex: -1, reason: (error as Error).message };
    }
  }

  /** Closes both plugs (the vxvde plug says goodbye) and the control socket; once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const plug of this.plugs) plug.close();
    this.#control?.close();
  }
}

/** A data plane running in a Worker. */
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
    const { ends, stopFd, control } = event.data;
    setLogLevel(event.data.logLevel);
    let plane: ThreadPlane;
    try {
      plane = ThreadPlane.open(ends, control);
    } catch (error) {
      scope.postMessage({ type: "error", message: (error as Error).message });
      return;
    }
    scope.postMessage({
      type: "ready",
      plugs: plane.plugs.map((plug) => ({ vnl: plug.vnl, counters: plug.counters })),
    });
    // The stop eventfd is only ever written to ask for the end.
    const end = plane.run({ fds: [stopFd], onReady: () => false });
    plane.close();
    scope.postMessage({ type: "finished", end });
  };
}
