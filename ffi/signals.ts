/**
 * Signals as descriptors: a signalfd reports the signals a poll loop waits
 * for, so a thread that blocks in poll() learns of them at once, with no
 * event loop turn.
 *
 * A signalfd only sees signals that every thread blocks, and a runtime's
 * threads are started before any of our code runs: so the process blocks the
 * signals and then replaces itself (execve) with a fresh copy, whose threads
 * all inherit the mask. See {@linkcode restartWithSignalsBlocked}.
 *
 * @module
 */

export { SIGHUP, SIGINT, SIGQUIT, SIGTERM } from "./abi.ts";
import { check, Errno, errno, libc, SystemError } from "./libc.ts";
import { environment, readTextFile } from "./os.ts";
import { replaceProcess } from "./spawn.ts";

const SIG_BLOCK = 0;
const SIGSET_SIZE = 128;
const SFD_NONBLOCK = 0o4000;
const SFD_CLOEXEC = 0o2000000;
/** struct signalfd_siginfo; ssi_signo is its first field. */
const SIGINFO_SIZE = 128;

function signalSet(signals: readonly number[]): Uint8Array<ArrayBuffer> {
  const set = new Uint8Array(SIGSET_SIZE);
  for (const signal of signals) set[(signal - 1) >> 3] |= 1 << ((signal - 1) & 7);
  return set;
}

/** Whether the calling thread blocks every one of `signals`. */
export function blocksAll(signals: readonly number[]): boolean {
  const current = new Uint8Array(SIGSET_SIZE);
  check(libc.pthread_sigmask(SIG_BLOCK, null, current), "pthread_sigmask");
  return signalSet(signals).every((bits, i) => (current[i] & bits) === bits);
}

/**
 * Blocks `signals` and replaces the process with a fresh copy of itself (same
 * pid, arguments and descriptors, or the command line `argv`) plus
 * `extraEnv`, so that every thread of the new image blocks them. Returns
 * only by throwing.
 */
export function restartWithSignalsBlocked(
  signals: readonly number[],
  extraEnv: Record<string, string>,
  argv: string[] = readTextFile("/proc/self/cmdline").split("\0").slice(0, -1),
): never {
  check(libc.pthread_sigmask(SIG_BLOCK, signalSet(signals), null), "pthread_sigmask");
  replaceProcess(argv, { ...environment(), ...extraEnv });
}

/** A signalfd for signals the whole process blocks. */
export class SignalDescriptor {
  readonly fd: number;
  readonly #info = new Uint8Array(SIGINFO_SIZE);
  readonly #signo = new Uint32Array(this.#info.buffer, 0, 1);

  constructor(signals: readonly number[]) {
    this.fd = check(
      libc.signalfd(-1, signalSet(signals), SFD_NONBLOCK | SFD_CLOEXEC),
      "signalfd",
    );
  }

  /** The next pending signal's number, or 0 when none is pending. */
  take(): number {
    const length = Number(
      libc.read(this.fd, Deno.UnsafePointer.of(this.#info), BigInt(SIGINFO_SIZE)),
    );
    if (length === SIGINFO_SIZE) return this.#signo[0];
    if (length < 0 && errno() !== Errno.EAGAIN && errno() !== Errno.EINTR) {
      throw new SystemError("read(signalfd)", errno());
    }
    return 0;
  }

  close(): void {
    libc.close(this.fd);
  }
}
