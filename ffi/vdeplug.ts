/**
 * libvdeplug (vdeplug4's `libvdeplug.so.2`, Debian's `libvdeplug2`): the C
 * library every VDE tool opens its networks with. It loads one plugin per
 * scheme (`libvdeplug_SCHEME.so`), so opening a VNL through it reaches every
 * vdeplug4 plugin installed, third-party ones included.
 *
 * The library is loaded on first use: vdeno runs without it, and says which
 * package brings it when a VNL needs it.
 *
 * @module
 */

import { O_CLOEXEC } from "./abi.ts";
import { closeQuietly, cString, errno, libc, strerror } from "./libc.ts";
import { createPrivateFile, getEnv, removeFile } from "./os.ts";

const symbols = {
  // VDECONN *vde_open_real(char *vnl, char *descr, int interface_version,
  //                        struct vde_open_args *open_args)
  vde_open_real: { parameters: ["buffer", "buffer", "i32", "pointer"], result: "pointer" },
  // ssize_t vde_recv(VDECONN *conn, void *buf, size_t len, int flags), read as its low 32 bits
  // like libc.ts's read: a frame is far below 2 GB and -1 stays -1.
  vde_recv: { parameters: ["pointer", "pointer", "usize", "i32"], result: "i32" },
  // ssize_t vde_send(VDECONN *conn, const void *buf, size_t len, int flags)
  vde_send: { parameters: ["pointer", "pointer", "usize", "i32"], result: "i32" },
  // int vde_datafd(VDECONN *conn)
  vde_datafd: { parameters: ["pointer"], result: "i32" },
  // int vde_ctlfd(VDECONN *conn)
  vde_ctlfd: { parameters: ["pointer"], result: "i32" },
  // int vde_close(VDECONN *conn)
  vde_close: { parameters: ["pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The interface version libvdeplug.h's vde_open macro passes. */
const LIBVDEPLUG_INTERFACE_VERSION = 1;
/** libvdeplug's errno when no plugin for the scheme could be loaded. */
export const EPROTONOSUPPORT = 93;

type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
let library: Symbols | undefined;
let loadError: string | undefined;

const RTLD_NOW = 2;
const RTLD_GLOBAL = 0x100;

/**
 * Plugins that nest a VNL (vlan://, agno://) call vde_open_real without
 * linking libvdeplug: they expect the program to have it in the global scope,
 * as vde_plug does, while Deno.dlopen keeps a library local. Loading it once
 * more with RTLD_GLOBAL first makes it global.
 */
function loadGlobally(name: string): void {
  const dl = Deno.dlopen("libc.so.6", {
    // void *dlopen(const char *filename, int flags)
    dlopen: { parameters: ["buffer", "i32"], result: "pointer" },
  });
  try {
    if (dl.symbols.dlopen(cString(name), RTLD_NOW | RTLD_GLOBAL) === null) {
      throw new Error(`${name}: cannot open shared object file`);
    }
  } finally {
    dl.close();
  }
}

/**
 * The loaded library, or a one-line reason it cannot be loaded (it is not
 * installed), without throwing.
 */
export function loadVdeplug(): { symbols: Symbols } | { error: string } {
  if (library) return { symbols: library };
  if (loadError === undefined) {
    try {
      loadGlobally("libvdeplug.so.2");
      library = Deno.dlopen("libvdeplug.so.2", symbols).symbols;
      return { symbols: library };
    } catch (error) {
      loadError = (error as Error).message.split("\n")[0];
    }
  }
  return { error: loadError };
}

/** A failed vde_open: its errno and the library's text for it. */
export class VdeOpenError extends Error {
  readonly code: number;
  /** What the plugin printed while it failed, on one line. */
  readonly said: string;
  constructor(vnl: string, code: number, said: string) {
    super(
      `Cannot open ${vnl} through libvdeplug: ${strerror(code)}${
        said ? ` (the plugin said: ${said})` : ""
      }`,
    );
    this.name = "VdeOpenError";
    this.code = code;
    this.said = said;
  }
}

const F_DUPFD_CLOEXEC = 1030;
const O_RDONLY = 0;
const SAID_LIMIT = 4096;

/**
 * Runs `body` with the process's stderr going to a file, and returns what
 * was written there: plugins print their complaints (an unknown option) to
 * stderr before they fail, and vdeno's error is one line. A file, not a
 * pipe: a command the plugin starts may keep the descriptor and write to it
 * later, which a pipe nobody reads would answer with SIGPIPE.
 */
function capturingStderr<T>(body: () => T): { value: T; said: string } {
  const random = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  const path = `${getEnv("TMPDIR") || "/tmp"}/vdeno-plugin-${Deno.pid}-${random}`;
  let writeFd: number;
  try {
    writeFd = createPrivateFile(path);
  } catch {
    return { value: body(), said: "" };
  }
  const readFd = libc.open(cString(path), O_RDONLY | O_CLOEXEC, 0);
  removeFile(path);
  const saved = writeFd < 0 || readFd < 0 ? -1 : libc.fcntl(2, F_DUPFD_CLOEXEC, 3);
  if (saved < 0) {
    closeQuietly(writeFd);
    closeQuietly(readFd);
    return { value: body(), said: "" };
  }
  libc.dup2(writeFd, 2);
  let value: T;
  try {
    value = body();
  } finally {
    libc.dup2(saved, 2);
    libc.close(saved);
    libc.close(writeFd);
  }
  const buffer = new Uint8Array(SAID_LIMIT);
  const count = libc.read(readFd, Deno.UnsafePointer.of(buffer), BigInt(SAID_LIMIT));
  libc.close(readFd);
  const said = count > 0 ? new TextDecoder().decode(buffer.subarray(0, count)) : "";
  return { value, said };
}

/** One connection opened by libvdeplug. */
export class VdeConnection {
  readonly #lib: Symbols;
  readonly #conn: Deno.PointerObject;
  /** The descriptor that turns readable when a frame waits. */
  readonly dataFd: number;
  /** The descriptor that turns readable or hangs up when the network ends; -1 when none. */
  readonly controlFd: number;
  // vde_open may keep pointers into its arguments: they live as long as the connection.
  readonly #arguments: Uint8Array[];
  #closed = false;

  private constructor(lib: Symbols, conn: Deno.PointerObject, args: Uint8Array[]) {
    this.#lib = lib;
    this.#conn = conn;
    this.#arguments = args;
    this.dataFd = lib.vde_datafd(conn);
    this.controlFd = lib.vde_ctlfd(conn);
  }

  /**
   * Opens `vnl` with libvdeplug; `description` is what a vde_switch shows for
   * the port. Throws a VdeOpenError (errno EPROTONOSUPPORT: no plugin for the
   * scheme), or an Error when the library is missing.
   */
  static open(lib: Symbols, vnl: string, description: string): VdeConnection {
    const args = [cString(vnl), cString(description)];
    const { value: [conn, code], said } = capturingStderr(() => {
      const conn = lib.vde_open_real(args[0], args[1], LIBVDEPLUG_INTERFACE_VERSION, null);
      return [conn, conn === null ? errno() : 0] as const;
    });
    const text = said.trim();
    if (conn === null) throw new VdeOpenError(vnl, code, text.split("\n").join("; "));
    // An open that succeeded may have something to say (slirp:///verbose prints its settings).
    if (text) console.error(text);
    return new VdeConnection(lib, conn, args);
  }

  /** Receives one frame into `length` bytes at `buffer`; returns its length, or -1 (see errno). */
  receive(buffer: Deno.PointerValue, length: bigint): number {
    return this.#lib.vde_recv(this.#conn, buffer, length, 0);
  }

  /** Sends the `length` bytes at `buffer` as one frame; returns the count sent, or -1. */
  send(buffer: Deno.PointerValue, length: number): number {
    return this.#lib.vde_send(this.#conn, buffer, BigInt(length), 0);
  }

  /** Closes the connection; the plugin releases what it holds. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#lib.vde_close(this.#conn);
    this.#arguments.length = 0;
  }
}
