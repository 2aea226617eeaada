/**
 * `--metrics ADDR:PORT`: every counter of every plug in the Prometheus text
 * exposition format, over HTTP.
 *
 * The HTTP server runs in a Worker of its own, never on a thread that moves
 * frames: `vdeno plug` runs its cable on the main thread in a blocking poll,
 * whose event loop never turns, and so does `vdeno ns` with one VNL (with
 * more, one cable per Worker). The
 * counters need no message to reach the server: every plug keeps them in a
 * Float64Array over a SharedArrayBuffer (core/counters.ts), which postMessage
 * shares rather than copies, so a scrape reads the numbers the data path
 * writes, at the moment it asks, and the data path never hears of it. A
 * reading may be a frame behind; a counter is never torn (a Float64 store is
 * one machine word).
 *
 * @module
 */

import { COUNTER_NAMES } from "../core/counters.ts";
import { readTextFile } from "../ffi/os.ts";
import { assertWorkersCanStart } from "./self.ts";

/** The counters of one plug, as the metrics server sees them. */
export interface MetricsSource {
  /** The plug's name in `vdeno status` (`--name`, or `ns-PID-vde0` for `vdeno ns`). */
  name: string;
  /** The VNL the plug was opened with. */
  vnl: string;
  /** The plug's counters, shared with the data path (a SharedArrayBuffer). */
  counters: Float64Array;
}

/** One metric family: how the counters named in `counters` are exposed. */
interface Family {
  metric: string;
  help: string;
  /** Counter name to the value of the extra label, if any. */
  counters: [string, Record<string, string>][];
}

/** Known counters; one not listed here is still exposed, under a name made from its own. */
const FAMILIES: { metric: string; help: string; match: (name: string) => boolean }[] = [
  {
    metric: "vdeno_received_frames_total",
    help: "Frames the plug received from its network.",
    match: (name) => name === "framesIn",
  },
  {
    metric: "vdeno_received_bytes_total",
    help: "Bytes of the frames the plug received from its network.",
    match: (name) => name === "bytesIn",
  },
  {
    metric: "vdeno_sent_frames_total",
    help: "Frames the plug sent to its network.",
    match: (name) => name === "framesOut",
  },
  {
    metric: "vdeno_sent_bytes_total",
    help: "Bytes of the frames the plug sent to its network.",
    match: (name) => name === "bytesOut",
  },
  {
    metric: "vdeno_sent_to_group_frames_total",
    help: "Frames a vxvde plug sent to the multicast group (broadcast, multicast, unknown MAC).",
    match: (name) => name === "sentMulticast",
  },
  {
    metric: "vdeno_sent_unicast_frames_total",
    help: "Frames a vxvde plug sent by unicast to the peer that owns the destination MAC.",
    match: (name) => name === "sentUnicast",
  },
  {
    metric: "vdeno_dropped_frames_total",
    help: "Frames or datagrams dropped, by reason.",
    match: (name) => name.startsWith("drop"),
  },
  {
    metric: "vdeno_macs_learned_total",
    help: "MAC addresses learned (or moved to a new slot) in the forwarding table.",
    match: (name) => name === "learned",
  },
  {
    metric: "vdeno_mac_table_evictions_total",
    help: "Live table entries replaced by another MAC that hashed to the same slot.",
    match: (name) => name === "tableEvictions",
  },
  {
    metric: "vdeno_mac_table_expiries_total",
    help: "Table entries found expired.",
    match: (name) => name === "tableExpiries",
  },
  {
    metric: "vdeno_goodbyes_received_total",
    help: "Goodbye datagrams received from leaving peers.",
    match: (name) => name === "goodbyesReceived",
  },
  {
    metric: "vdeno_received_super_frames_total",
    help: "Super-frames (offloaded TCP/UDP runs) received.",
    match: (name) => name === "superFramesIn",
  },
  {
    metric: "vdeno_sent_super_frames_total",
    help: "Super-frames (offloaded TCP/UDP runs) sent.",
    match: (name) => name === "superFramesOut",
  },
  {
    metric: "vdeno_sent_cut_frames_total",
    help: "Frames sent in pieces: on a keyed network, longer than one datagram carries.",
    match: (name) => name === "framesCut",
  },
];

/** `dropWrongHeader` -> `wrong_header`. */
function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`).replace(/^_/, "");
}

/** The metric families over the counters as they are named today. */
function families(): Family[] {
  const result: Family[] = [];
  const byMetric = new Map<string, Family>();
  for (const name of COUNTER_NAMES) {
    const known = FAMILIES.find((family) => family.match(name));
    const metric = known?.metric ?? `vdeno_${snake(name)}_total`;
    let family = byMetric.get(metric);
    if (!family) {
      family = { metric, help: known?.help ?? `The plug's ${name} counter.`, counters: [] };
      byMetric.set(metric, family);
      result.push(family);
    }
    family.counters.push([name, name.startsWith("drop") ? { reason: snake(name.slice(4)) } : {}]);
  }
  return result;
}

const FAMILY_LIST = families();
const INDEX = new Map<string, number>(COUNTER_NAMES.map((name, i) => [name, i]));

function labelValue(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function labels(values: Record<string, string>): string {
  return Object.entries(values).map(([key, value]) => `${key}="${labelValue(value)}"`).join(",");
}

/** The numbers of this process that Prometheus client libraries call process_*. */
function processMetrics(): string[] {
  const lines: string[] = [];
  try {
    const status = readTextFile("/proc/self/status");
    const kb = (field: string) =>
      Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
    lines.push(
      "# HELP process_resident_memory_bytes Resident memory size in bytes.",
      "# TYPE process_resident_memory_bytes gauge",
      `process_resident_memory_bytes ${kb("VmRSS") * 1024}`,
      "# HELP vdeno_process_peak_resident_memory_bytes Peak resident memory size in bytes (VmHWM).",
      "# TYPE vdeno_process_peak_resident_memory_bytes gauge",
      `vdeno_process_peak_resident_memory_bytes ${kb("VmHWM") * 1024}`,
    );
    const stat = readTextFile("/proc/self/stat");
    // Fields after the command name, which may hold spaces: utime and stime are 14th and 15th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    lines.push(
      "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
      "# TYPE process_cpu_seconds_total counter",
      // Linux reports clock ticks of 1/100 s (USER_HZ) in /proc on every architecture.
      `process_cpu_seconds_total ${ticks / 100}`,
    );
  } catch {
    // Not Linux /proc: the plugs' own counters still go out.
  }
  return lines;
}

/**
 * The exposition of `sources` in the Prometheus text format (version 0.0.4):
 * a `# HELP` and `# TYPE` line per family, one sample per plug (and per drop
 * reason), labelled with the plug's `name` and `vnl`.
 */
export function renderMetrics(sources: readonly MetricsSource[], startedAt: number): string {
  const lines: string[] = [];
  for (const family of FAMILY_LIST) {
    lines.push(`# HELP ${family.metric} ${family.help}`, `# TYPE ${family.metric} counter`);
    for (const source of sources) {
      for (const [counter, extra] of family.counters) {
        const value = source.counters[INDEX.get(counter)!];
        lines.push(
          `${family.metric}{${labels({ name: source.name, vnl: source.vnl, ...extra })}} ${value}`,
        );
      }
    }
  }
  lines.push(
    "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.",
    "# TYPE process_start_time_seconds gauge",
    `process_start_time_seconds ${startedAt / 1000}`,
    ...processMetrics(),
  );
  return lines.join("\n") + "\n";
}

/** Parses `ADDR:PORT` (`[ADDR]:PORT` for IPv6) as given to `--metrics`. */
export function parseMetricsAddress(text: string): { hostname: string; port: number } {
  const match = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:\[\]]+):(\d+)$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || !(port >= 1 && port <= 65535)) {
    throw new Error(
      `Bad --metrics address: ${JSON.stringify(text)}; expected ADDR:PORT such as ` +
        `127.0.0.1:9578 or [::1]:9578`,
    );
  }
  return { hostname: match[1], port };
}

/** The worker's name, by which the main module knows to run {@linkcode runMetricsWorker}. */
export const METRICS_WORKER = "vdeno-metrics";

type ToMain = { type: "listening" } | { type: "error"; message: string };

type ToWorker =
  | { type: "start"; hostname: string; port: number; startedAt: number }
  | { type: "add"; sources: MetricsSource[] };

/** A metrics server running in a Worker of its own. */
export class MetricsServer {
  readonly #worker: Worker;

  private constructor(worker: Worker) {
    this.#worker = worker;
  }

  /**
   * Starts serving `GET /metrics` at `address` (`ADDR:PORT`); resolves once it
   * listens, rejects with the reason it cannot.
   */
  static start(address: string): Promise<MetricsServer> {
    const { hostname, port } = parseMetricsAddress(address);
    assertWorkersCanStart("the --metrics server's thread");
    const worker = new Worker(Deno.mainModule, { type: "module", name: METRICS_WORKER });
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<ToMain>) => {
        if (event.data.type === "listening") resolve(new MetricsServer(worker));
        else {
          worker.terminate();
          reject(new Error(`Cannot serve metrics on ${address}: ${event.data.message}`));
        }
      };
      worker.onerror = (event) => {
        event.preventDefault();
        worker.terminate();
        reject(new Error(`Cannot serve metrics on ${address}: ${event.message}`));
      };
      const start: ToWorker = { type: "start", hostname, port, startedAt: Date.now() };
      worker.postMessage(start);
    });
  }

  /** Exposes the counters of more plugs; their arrays are shared, not copied. */
  add(sources: MetricsSource[]): void {
    const message: ToWorker = { type: "add", sources };
    this.#worker.postMessage(message);
  }

  /** Stops the server. */
  close(): void {
    this.#worker.terminate();
  }
}

/** The worker's side: called by the main module when it runs as the metrics worker. */
export function runMetricsWorker(): void {
  const scope = self as unknown as {
    postMessage(message: ToMain): void;
    onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  };
  const sources: MetricsSource[] = [];
  scope.onmessage = (event) => {
    const message = event.data;
    if (message.type === "add") {
      sources.push(...message.sources);
      return;
    }
    try {
      Deno.serve({
        hostname: message.hostname,
        port: message.port,
        onListen: () => scope.postMessage({ type: "listening" }),
        onError: () => new Response("Internal error\n", { status: 500 }),
      }, (request) => {
        const path = new URL(request.url).pathname;
        if (path !== "/metrics" && path !== "/") {
          return new Response("Not found: the metrics are at /metrics\n", { status: 404 });
        }
        return new Response(renderMetrics(sources, message.startedAt), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      });
    } catch (error) {
      scope.postMessage({ type: "error", message: (error as Error).message });
    }
  };
}
