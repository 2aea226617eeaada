/**
 * The control socket of a running plug: a Unix socket in the user's runtime
 * directory, mode 0600, that answers one JSON status report per connection.
 * `vdeno status` is its client.
 *
 * The directory is trusted only when it is a real directory (not a symbolic
 * link) of the caller's, mode 0700: in /tmp another user could have made it
 * first, to swap sockets or plant fake plugs.
 *
 * @module
 */

import { closeQuietly, Errno, SystemError } from "../ffi/libc.ts";
import {
  fileInfo,
  getEnv,
  listDirectory,
  makeDirectory,
  removeFile,
  renameFile,
  userId,
} from "../ffi/os.ts";
import {
  acceptConnection,
  connectUnix,
  listenUnix,
  readToEnd,
  readWithin,
  writeAll,
} from "../ffi/unix.ts";
import { type CounterName, countersObject } from "../core/counters.ts";
import type { Plug } from "../core/plug.ts";

/** What a plug reports about itself. */
export interface StatusReport {
  name: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  plugs: PlugStatus[];
  /** For a plug of `vdeno ns`: the namespace's command, and the pid of its first process. */
  namespace?: NamespaceInfo;
}

/** The namespace a `vdeno ns` plug serves. */
export interface NamespaceInfo {
  /** The first process in the namespaces (`nsenter -t PID -n` enters them). */
  pid: number;
  command: string[];
}

/** One plug of a running cable. */
export interface PlugStatus {
  vnl: string;
  counters: Record<CounterName, number>;
  [detail: string]: unknown;
}

/**
 * The directory of control sockets: $XDG_RUNTIME_DIR/vdeno, else /run/vdeno
 * for root and /tmp/vdeno-UID for other users.
 */
export function controlDirectory(): string {
  const runtime = getEnv("XDG_RUNTIME_DIR");
  if (runtime) return `${runtime}/vdeno`;
  const uid = userId();
  return uid === 0 ? "/run/vdeno" : `/tmp/vdeno-${uid}`;
}

/**
 * Throws one clear line unless `directory` is a real directory owned by the
 * caller with mode 0700. Returns false when it does not exist.
 */
export function checkControlDirectory(directory: string): boolean {
  const info = fileInfo(directory, false);
  if (!info) return false;
  const uid = userId();
  const mode = info.mode;
  const problem = info.isSymlink
    ? "is a symbolic link"
    : !info.isDirectory
    ? "is not a directory"
    : info.uid !== uid
    ? `belongs to uid ${info.uid}, not to uid ${uid}`
    : mode !== 0o700
    ? `has mode 0${mode.toString(8)}, not 0700`
    : undefined;
  if (problem) {
    throw new Error(
      `Unsafe control directory ${directory}: it ${problem}; ` +
        "remove it, or set XDG_RUNTIME_DIR to a private directory",
    );
  }
  return true;
}

/** Creates the control directory (0700) if needed and checks it is safe to use. */
function prepareControlDirectory(): string {
  const directory = controlDirectory();
  if (checkControlDirectory(directory)) return directory;
  try {
    makeDirectory(directory, 0o700);
  } catch (error) {
    throw new Error(`Cannot create the control directory: ${(error as Error).message}`);
  }
  checkControlDirectory(directory);
  return directory;
}

/** Whether `path` is a socket (not following a symbolic link). */
function isSocket(path: string): boolean {
  try {
    return fileInfo(path, false)?.isSocket === true;
  } catch {
    return false;
  }
}

/** The report of a cable of `plugs`, named `name`, running since `startedAt`. */
export function cableReport(
  name: string,
  startedAt: Date,
  plugs: readonly Plug[],
  namespace?: NamespaceInfo,
): StatusReport {
  return {
    name,
    pid: Deno.pid,
    startedAt: startedAt.toISOString(),
    uptimeSeconds: (Date.now() - startedAt.getTime()) / 1000,
    ...(namespace ? { namespace } : {}),
    plugs: plugs.map((plug) => ({
      ...plug.describe?.(),
      vnl: plug.vnl,
      counters: countersObject(plug.counters),
    })),
  };
}

/** The longest a client that stops reading may hold up the plug's loop. */
const ANSWER_TIMEOUT_MS = 500;
/**
 * How long the plug waits for a client's request line: clients of this
 * module send it as they connect; one that sends none gets the status report.
 */
const REQUEST_WAIT_MS = 50;

/** What `vdeno reload` gets back: per plug of the cable, what its reload did. */
export interface ReloadReport {
  name: string;
  pid: number;
  plugs: { vnl: string; result?: string; error?: string }[];
}

/** Reloads every plug of a cable that can (a keyed vxvde plug re-reads its key). */
export function reloadPlugs(name: string, plugs: readonly Plug[]): ReloadReport {
  return {
    name,
    pid: Deno.pid,
    plugs: plugs.filter((plug) => plug.reload !== undefined).map((plug) => {
      try {
        return { vnl: plug.vnl, result: plug.reload!() };
      } catch (error) {
        return { vnl: plug.vnl, error: (error as Error).message };
      }
    }),
  };
}

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
  readonly #reload?: () => ReloadReport;
  #closed = false;

  private constructor(
    path: string,
    fd: number,
    report: () => StatusReport,
    reload?: () => ReloadReport,
  ) {
    this.path = path;
    this.fd = fd;
    this.#report = report;
    this.#reload = reload;
  }

  /**
   * Listens at `<controlDirectory()>/<name>.sock`. A live plug of the same
   * name is an error; a socket left by a dead one is replaced.
   */
  static start(
    name: string,
    report: () => StatusReport,
    reload?: () => ReloadReport,
  ): ControlServer {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
      throw new Error(
        `Bad plug name: ${JSON.stringify(name)}; use letters, digits, '.', '_' or '-'`,
      );
    }
    const directory = prepareControlDirectory();
    const path = `${directory}/${name}.sock`;
    if (isLive(path)) throw new Error(`A plug named ${name} is already running (${path})`);
    // Bound under a name of its own and renamed once it listens, so that no
    // client (`vdeno status` removing dead sockets) ever sees it unanswered.
    const temporary = `${directory}/.${name}.${Deno.pid}.tmp`;
    if (isSocket(temporary)) removeFile(temporary);
    const fd = listenUnix(temporary);
    try {
      renameFile(temporary, path);
    } catch (error) {
      closeQuietly(fd);
      throw error;
    }
    return new ControlServer(path, fd, report, reload);
  }

  /**
   * Answers every client waiting on the socket: `reload` reloads the plugs
   * (`vdeno reload`), anything else gets the status report.
   */
  serve(): void {
    for (;;) {
      const connection = acceptConnection(this.fd, ANSWER_TIMEOUT_MS);
      if (connection < 0) return;
      try {
        const request = readWithin(connection, 64, REQUEST_WAIT_MS);
        const reload = request !== undefined &&
          new TextDecoder().decode(request).trim() === "reload";
        const answer = !reload
          ? this.#report()
          : this.#reload?.() ?? { error: "this plug has nothing to reload" };
        writeAll(connection, encoder.encode(JSON.stringify(answer) + "\n"));
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
      removeFile(this.path);
    } catch {
      // Cleanup is best effort: the plug stops either way.
    }
  }
}

const encoder = new TextEncoder();

/** Whether a plug listens at `path`; EAGAIN (a full queue) counts as live. */
function isLive(path: string): boolean {
  try {
    closeQuietly(connectUnix(path));
    return true;
  } catch (error) {
    return error instanceof SystemError && error.code === Errno.EAGAIN;
  }
}

/** How long `vdeno status` waits for one plug's report. */
export const QUERY_TIMEOUT_MS = 2000;
/** The largest report `vdeno status` reads (a full 1M-entry MAC table fits). */
export const QUERY_MAX_BYTES = 128 << 20;

/** Why a control socket gave no report. */
export class NoAnswer extends Error {
  /** Nobody listens there any more: the socket of a plug that died. */
  readonly stale: boolean;
  constructor(message: string, stale = false) {
    super(message);
    this.name = "NoAnswer";
    this.stale = stale;
  }
}

/**
 * Asks the plug at `path` for its report, waiting at most `timeoutMs` and
 * reading at most `maxBytes`. Throws {@linkcode NoAnswer} otherwise.
 */
export async function queryStatus(
  path: string,
  timeoutMs = QUERY_TIMEOUT_MS,
  maxBytes = QUERY_MAX_BYTES,
): Promise<StatusReport> {
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch (error) {
    const stale = error instanceof SystemError && error.code === Errno.ECONNREFUSED;
    throw new NoAnswer(stale ? "nobody listens" : (error as Error).message, stale);
  }
  try {
    writeAll(fd, encoder.encode("status\n"));
    const { bytes, ended } = await readToEnd(fd, maxBytes, timeoutMs);
    if (ended === "timeout") throw new NoAnswer(`no answer within ${timeoutMs / 1000} s`);
    if (ended === "too long") throw new NoAnswer(`answer longer than ${maxBytes} bytes`);
    if (ended === "error") throw new NoAnswer("read failed");
    let report: unknown;
    try {
      report = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new NoAnswer("the answer is not JSON");
    }
    if (!isStatusReport(report)) throw new NoAnswer("the answer is not a status report");
    return report;
  } finally {
    closeQuietly(fd);
  }
}

/**
 * Asks the plug at `path` to reload (re-read its keys); resolves to its
 * answer. Throws {@linkcode NoAnswer} when it gives none.
 */
export async function requestReload(path: string, timeoutMs = QUERY_TIMEOUT_MS): Promise<
  ReloadReport | { error: string }
> {
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch (error) {
    throw new NoAnswer((error as Error).message);
  }
  try {
    writeAll(fd, encoder.encode("reload\n"));
    const { bytes, ended } = await readToEnd(fd, 1 << 20, timeoutMs);
    if (ended !== "end") throw new NoAnswer(`no complete answer within ${timeoutMs / 1000} s`);
    try {
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new NoAnswer("the answer is not JSON");
    }
  } finally {
    closeQuietly(fd);
  }
}

function isStatusReport(value: unknown): value is StatusReport {
  const report = value as StatusReport;
  return typeof report === "object" && report !== null && typeof report.name === "string" &&
    typeof report.pid === "number" && typeof report.uptimeSeconds === "number" &&
    Array.isArray(report.plugs) &&
    report.plugs.every((plug) =>
      typeof plug === "object" && plug !== null && typeof plug.vnl === "string" &&
      typeof plug.counters === "object" && plug.counters !== null &&
      Object.values(plug.counters).every((n) => typeof n === "number")
    );
}

/**
 * Removes the control socket at `path` if nobody listens there any more (a
 * plug that was killed leaves it behind); true when it did.
 */
export function removeIfStale(path: string): boolean {
  if (!isSocket(path)) return false;
  try {
    closeQuietly(connectUnix(path));
    return false;
  } catch (error) {
    if (!(error instanceof SystemError && error.code === Errno.ECONNREFUSED)) return false;
  }
  try {
    return removeFile(path);
  } catch {
    return false;
  }
}

/**
 * The control sockets in the directory, live or not; none when the directory
 * does not exist. Throws one line when the directory is not safe to trust.
 */
export function controlSockets(): { name: string; path: string }[] {
  const directory = controlDirectory();
  if (!checkControlDirectory(directory)) return [];
  return listDirectory(directory)
    .filter((entry) => entry.endsWith(".sock") && !entry.startsWith("."))
    .map((entry) => ({ name: entry.slice(0, -5), path: `${directory}/${entry}` }))
    .filter((socket) => isSocket(socket.path))
    .sort((a, b) => a.name.localeCompare(b.name));
}
