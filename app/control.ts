/**
 * The control socket of a running plug: a Unix socket in the user's runtime
 * directory, mode 0600, that answers one JSON status report per connection.
 * `vdeno status` is its client.
 *
 * @module
 */

import { closeQuietly } from "../ffi/libc.ts";
import { acceptConnection, listenUnix, writeAll } from "../ffi/unix.ts";
import type { CounterName } from "../core/counters.ts";

/** What a plug reports about itself. */
export interface StatusReport {
  name: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  plugs: PlugStatus[];
}

/** One plug of a running cable. */
export interface PlugStatus {
  vnl: string;
  counters: Record<CounterName, number>;
  [detail: string]: unknown;
}

/** The directory of control sockets: $XDG_RUNTIME_DIR/vdeno, or /tmp/vdeno-UID. */
export function controlDirectory(): string {
  const runtime = Deno.env.get("XDG_RUNTIME_DIR");
  return runtime ? `${runtime}/vdeno` : `/tmp/vdeno-${Deno.uid() ?? 0}`;
}

/** The longest a client that stops reading may hold up the plug's loop. */
const ANSWER_TIMEOUT_MS = 500;

/**
 * A listening control socket. It is a plain descriptor for the plug's own
 * poll loop to watch: the loop calls {@linkcode serve} when it is readable,
 * and reports come straight from the plugs, with no thread or event loop.
 */
export class ControlServer {
  readonly path: string;
  /** The listening socket, to poll for readability. */
  readonly fd: number;
  readonly #report: () => StatusReport;
  #closed = false;

  private constructor(path: string, fd: number, report: () => StatusReport) {
    this.path = path;
    this.fd = fd;
    this.#report = report;
  }

  /**
   * Listens at `<controlDirectory()>/<name>.sock`. A live plug of the same
   * name is an error; a socket left by a dead one is replaced.
   */
  static async start(name: string, report: () => StatusReport): Promise<ControlServer> {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
      throw new Error(
        `Bad plug name: ${JSON.stringify(name)}; use letters, digits, '.', '_' or '-'`,
      );
    }
    const directory = controlDirectory();
    Deno.mkdirSync(directory, { recursive: true, mode: 0o700 });
    Deno.chmodSync(directory, 0o700);
    const path = `${directory}/${name}.sock`;
    if (await isLive(path)) throw new Error(`A plug named ${name} is already running (${path})`);
    try {
      Deno.removeSync(path);
    } catch {
      // No stale socket: nothing to remove.
    }
    const fd = listenUnix(path);
    Deno.chmodSync(path, 0o600);
    return new ControlServer(path, fd, report);
  }

  /** Answers every client waiting on the socket with one report each. */
  serve(): void {
    for (;;) {
      const connection = acceptConnection(this.fd, ANSWER_TIMEOUT_MS);
      if (connection < 0) return;
      try {
        writeAll(connection, encoder.encode(JSON.stringify(this.#report()) + "\n"));
      } finally {
        closeQuietly(connection);
      }
    }
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.fd);
    try {
      Deno.removeSync(this.path);
    } catch {
      // Already removed.
    }
  }
}

const encoder = new TextEncoder();

async function isLive(path: string): Promise<boolean> {
  try {
    const connection = await Deno.connect({ transport: "unix", path });
    connection.close();
    return true;
  } catch {
    return false;
  }
}

/** Asks the plug at `path` for its report. */
export async function queryStatus(path: string): Promise<StatusReport> {
  const connection = await Deno.connect({ transport: "unix", path });
  try {
    const text = await new Response(connection.readable).text();
    return JSON.parse(text) as StatusReport;
  } finally {
    try {
      connection.close();
    } catch {
      // Closed by the stream already.
    }
  }
}

/** The control sockets in the directory, live or not. */
export function controlSockets(): { name: string; path: string }[] {
  const directory = controlDirectory();
  try {
    return [...Deno.readDirSync(directory)]
      .filter((entry) => entry.name.endsWith(".sock"))
      .map((entry) => ({ name: entry.name.slice(0, -5), path: `${directory}/${entry.name}` }))
      .sort((a, b) => a.name.localeCompare(b.name));
  } catch {
    return [];
  }
}
