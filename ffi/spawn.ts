/**
 * Starting a program with chosen descriptors as its stdin and stdout, and
 * waiting for it: posix_spawnp and waitpid. Deno.Command cannot hand a child
 * arbitrary descriptors (pipes the data path polls directly, a TAP).
 *
 * @module
 */

import { O_CLOEXEC } from "./abi.ts";
import { check, closeQuietly, cString, Errno, errno, libc, strerror, SystemError } from "./libc.ts";
import { environment } from "./os.ts";

const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSID = 0x80;
const WNOHANG = 1;

/** A pipe: bytes written to `write` come out of `read`. Both close on exec. */
export function pipe(): { read: number; write: number } {
  const fds = new Int32Array(2);
  check(libc.pipe2(new Uint8Array(fds.buffer), O_CLOEXEC), "pipe2");
  return { read: fds[0], write: fds[1] };
}

/**
 * C strings of `texts` and a NULL-terminated array of pointers to them, for
 * argv and envp. Keep the result alive until the call that uses it returns.
 */
export function cStringArray(
  texts: string[],
): { strings: Uint8Array<ArrayBuffer>[]; pointers: Uint8Array<ArrayBuffer> } {
  const strings = texts.map(cString);
  const pointers = new BigUint64Array(strings.length + 1);
  strings.forEach((text, i) => {
    pointers[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(text)));
  });
  return { strings, pointers: new Uint8Array(pointers.buffer) };
}

/** `KEY=value` lines of an environment. */
export function environmentLines(env: Record<string, string>): string[] {
  return Object.entries(env).map(([key, value]) => `${key}=${value}`);
}

/** Options of {@linkcode spawn}. */
export interface SpawnOptions {
  /** Descriptors the child gets: key = its descriptor number, value = ours. */
  descriptors?: Record<number, number>;
  /** Environment; the current one by default. */
  env?: Record<string, string>;
  /** Start the child in a session of its own (setsid), as a daemon. */
  newSession?: boolean;
}

/**
 * Starts `argv[0]` (searched in PATH) with `argv`. Signal dispositions and
 * the signal mask are reset, so the child does not inherit the runtime's.
 */
export function spawn(argv: string[], options: SpawnOptions = {}): number {
  const actions = new Uint8Array(80); // posix_spawn_file_actions_t
  const attributes = new Uint8Array(336); // posix_spawnattr_t
  check(libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init");
  check(libc.posix_spawnattr_init(attributes), "posix_spawnattr_init");
  try {
    for (const [childFd, ourFd] of Object.entries(options.descriptors ?? {})) {
      check(libc.posix_spawn_file_actions_adddup2(actions, ourFd, Number(childFd)), "adddup2");
    }
    const allSignals = new Uint8Array(128).fill(0xff);
    const noSignals = new Uint8Array(128);
    libc.posix_spawnattr_setsigdefault(attributes, allSignals);
    libc.posix_spawnattr_setsigmask(attributes, noSignals);
    libc.posix_spawnattr_setflags(
      attributes,
      POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
        (options.newSession ? POSIX_SPAWN_SETSID : 0),
    );
    const args = cStringArray(argv);
    const env = cStringArray(environmentLines(options.env ?? environment()));
    const pid = new Int32Array(1);
    const result = libc.posix_spawnp(
      new Uint8Array(pid.buffer),
      args.strings[0],
      actions,
      attributes,
      args.pointers,
      env.pointers,
    );
    if (result !== 0) throw new Error(`Cannot run ${argv[0]}: ${strerror(result)}`);
    return pid[0];
  } finally {
    libc.posix_spawn_file_actions_destroy(actions);
    libc.posix_spawnattr_destroy(attributes);
  }
}

/** How a child ended: its exit code, or the signal that killed it. */
export interface ExitStatus {
  code: number;
  signal?: number;
}

/** The child's status if it has ended, without waiting; undefined while it runs. */
export function reap(pid: number): ExitStatus | undefined {
  const status = new Int32Array(1);
  const result = libc.waitpid(pid, new Uint8Array(status.buffer), WNOHANG);
  if (result === 0) return undefined;
  if (result < 0) {
    const code = errno();
    if (code === Errno.EINTR) return undefined;
    return { code: 127 };
  }
  const raw = status[0];
  const signal = raw & 0x7f;
  return signal === 0 ? { code: (raw >> 8) & 0xff } : { code: 128 + signal, signal };
}

/**
 * Replaces this process with `argv` (same pid and descriptors; the
 * executable is the running one, so that ps still says deno or vdeno), in
 * environment `env`. Returns only by throwing.
 */
export function replaceProcess(argv: string[], env: Record<string, string>): never {
  const args = cStringArray(argv);
  const environ = cStringArray(environmentLines(env));
  libc.execve(cString(Deno.execPath()), args.pointers, environ.pointers);
  throw new SystemError("Cannot restart vdeno: execve", errno());
}

/** pidfd_open(2)'s number: the same on every architecture (Linux 5.3 and later). */
const SYS_PIDFD_OPEN = 434n;

/**
 * A pidfd: a descriptor that becomes readable when the child ends, so that a
 * poll loop hears of it among its other descriptors. The child is still to be
 * reaped ({@linkcode reap}). Closes on exec.
 */
export class ExitDescriptor {
  readonly fd: number;

  constructor(pid: number) {
    this.fd = check(libc.syscall(SYS_PIDFD_OPEN, BigInt(pid), 0n), "pidfd_open");
  }

  close(): void {
    libc.close(this.fd);
  }
}

/**
 * Replaces this process with the program `argv[0]` (searched in PATH), which
 * starts as {@linkcode spawn} starts a child: every signal at its default
 * disposition (the runtime ignores SIGPIPE, which exec would keep) and none
 * blocked. Returns only by throwing, in spawn's words.
 */
export function becomeProgram(argv: string[], env: Record<string, string> = environment()): never {
  const args = cStringArray(argv);
  const environ = cStringArray(environmentLines(env));
  // SIG_DFL is 0; SIGKILL, SIGSTOP and the C library's own signals refuse it, and need not.
  for (let signal = 1; signal <= 64; signal++) libc.signal(signal, null);
  const SIG_SETMASK = 2;
  libc.pthread_sigmask(SIG_SETMASK, new Uint8Array(128), null);
  libc.execvpe(args.strings[0], args.pointers, environ.pointers);
  throw new Error(`Cannot run ${argv[0]}: ${strerror(errno())}`);
}

/** Waits for the child to end, blocking the thread: for children that end at once. */
export function waitBlocking(pid: number): ExitStatus {
  const status = new Int32Array(1);
  while (libc.waitpid(pid, new Uint8Array(status.buffer), 0) < 0) {
    if (errno() !== Errno.EINTR) return { code: 127 };
  }
  const signal = status[0] & 0x7f;
  return signal === 0 ? { code: (status[0] >> 8) & 0xff } : { code: 128 + signal, signal };
}

/** /dev/null opened for reading and writing, to give a child as stdin or stdout. */
export function openDevNull(): number {
  const O_RDWR = 2;
  return check(libc.open(cString("/dev/null"), O_RDWR | O_CLOEXEC, 0), "open /dev/null");
}

/**
 * Runs `argv` to its end and returns its exit status and standard output
 * (stderr is discarded), for short commands such as `git rev-parse`.
 */
export function captureOutput(argv: string[]): ExitStatus & { stdout: string } {
  const output = pipe();
  const devNull = openDevNull();
  let pid: number;
  try {
    pid = spawn(argv, { descriptors: { 0: devNull, 1: output.write, 2: devNull } });
  } catch (error) {
    closeQuietly(output.read);
    throw error;
  } finally {
    closeQuietly(output.write);
    closeQuietly(devNull);
  }
  const chunks: Uint8Array[] = [];
  const chunk = new Uint8Array(4096);
  for (;;) {
    const count = libc.read(output.read, Deno.UnsafePointer.of(chunk), BigInt(chunk.length));
    if (count < 0 && errno() === Errno.EINTR) continue;
    if (count <= 0) break;
    chunks.push(chunk.slice(0, count));
  }
  closeQuietly(output.read);
  const stdout = new TextDecoder().decode(
    chunks.reduce((all, part) => {
      const joined = new Uint8Array(all.length + part.length);
      joined.set(all);
      joined.set(part, all.length);
      return joined;
    }, new Uint8Array(0)),
  );
  return { ...waitBlocking(pid), stdout };
}

/** Waits for the child to end, letting the event loop run meanwhile. */
export async function waitFor(pid: number, pollMs = 20): Promise<ExitStatus> {
  for (;;) {
    const status = reap(pid);
    if (status) return status;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/** Sends a signal; false when the process is gone. */
export function signalProcess(pid: number, signal: number): boolean {
  return libc.kill(pid, signal) === 0;
}
