/**
 * The control socket of a running plug: a Unix socket in the user's runtime
 * directory, mode 0600, that answers one JSON status report per connection.
 * `vdeno status` is its client.
 *
 * @module
 */

import type { CounterName } from "./counters.ts";

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

/** A listening control socket. */
export class ControlServer {
  readonly path: string;
  readonly #listener: Deno.UnixListener;
  readonly #served: Promise<void>;

  private constructor(path: string, listener: Deno.UnixListener, served: Promise<void>) {
    this.path = path;
    this.#listener = listener;
    this.#served = served;
  }

  /**
   * Listens at `<controlDirectory()>/<name>.sock`. A live plug of the same
   * name is an error; a socket left by a dead one is replaced.
   */
  static async start(name: string, report: () => Promise<StatusReport>): Promise<ControlServer> {
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
    const listener = Deno.listen({ transport: "unix", path });
    Deno.chmodSync(path, 0o600);
    const served = (async () => {
      for await (const connection of listener) {
        (async () => {
          try {
            const body = new TextEncoder().encode(JSON.stringify(await report()) + "\n");
            for (let written = 0; written < body.length;) {
              written += await connection.write(body.subarray(written));
            }
          } catch {
            // The client went away mid-answer: nothing to do.
          } finally {
            connection.close();
          }
        })();
      }
    })().catch(() => {});
    return new ControlServer(path, listener, served);
  }

  /** Stops listening and removes the socket file. */
  async close(): Promise<void> {
    this.#listener.close();
    await this.#served;
    try {
      Deno.removeSync(this.path);
    } catch {
      // Already removed.
    }
  }
}

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
