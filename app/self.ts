/**
 * How to start vdeno again as a child process (daemon mode, namespace
 * helpers): with the very command line that started this process, less its
 * arguments. That is `deno run FLAGS main.ts` from a checkout, `deno run
 * FLAGS vdeno.js` for the bundled file, or the compiled executable alone; a
 * child so gets the same permissions as its parent, no more.
 *
 * @module
 */

import { environment, getEnv, readTextFile } from "../ffi/os.ts";
import { blocksAll, restartWithSignalsBlocked } from "../ffi/signals.ts";
import { captureOutput } from "../ffi/spawn.ts";

/** The argv prefix that runs vdeno again. */
export function selfCommand(): string[] {
  const argv = readTextFile("/proc/self/cmdline").split("\0").slice(0, -1);
  const prefix = argv.slice(0, argv.length - Deno.args.length);
  // argv[0] may be a bare name found on PATH; the kernel knows which file it was.
  prefix[0] = Deno.execPath();
  return prefix;
}

/** The directory of vdeno's own files (the checkout, or the bundle's), or undefined. */
function ownDirectory(): string | undefined {
  const main = new URL(Deno.mainModule);
  if (main.protocol !== "file:") return undefined;
  return main.pathname.slice(0, main.pathname.lastIndexOf("/")) || "/";
}

function mayReadOwnFiles(directory: string): boolean {
  return Deno.permissions.querySync({ name: "read", path: directory }).state === "granted";
}

/**
 * The command line that starts this process again able to start Workers,
 * or undefined when it can already (or was not started by `deno run`).
 * Deno loads a Worker's modules, vdeno's own files, only with read
 * permission for them, which the main thread's start did not need: the
 * command line gains `--allow-read=DIR` for their directory alone. (With
 * `--allow-ffi` a process can read anything through libc; the flag
 * narrows nothing that was not open already.)
 */
export function withWorkerPermission(): string[] | undefined {
  const directory = ownDirectory();
  if (directory === undefined || mayReadOwnFiles(directory)) return undefined;
  const argv = readTextFile("/proc/self/cmdline").split("\0").slice(0, -1);
  if (argv[1] !== "run") return undefined;
  return [argv[0], "run", `--allow-read=${directory}`, ...argv.slice(2)];
}

/**
 * Throws one line when Deno would refuse to start a Worker running vdeno
 * (`what`, e.g. "its data-plane threads"): Deno loads a Worker's modules,
 * vdeno's own files, only with read permission for them, which the main
 * thread's start did not need.
 */
export function assertWorkersCanStart(what: string): void {
  const directory = ownDirectory();
  if (directory === undefined || mayReadOwnFiles(directory)) return;
  throw new Error(
    `Needs --allow-read=${directory} to start ${what}, which Deno loads from ` +
      `vdeno's own files: run deno with --allow-read=${directory} (or -A)`,
  );
}

/** What tools/bundle.ts writes at the top of the bundled file. */
interface BuildStamp {
  commit: string;
}

/**
 * The commit vdeno was built from: stamped into the bundled file when it was
 * built, or asked of git in a checkout; "unknown" when neither says.
 */
export function buildCommit(): string {
  const stamp = (globalThis as { VDENO_BUILD?: BuildStamp }).VDENO_BUILD;
  if (stamp) return stamp.commit;
  const main = new URL(Deno.mainModule);
  if (main.protocol !== "file:") return "unknown";
  return gitCommit(main.pathname.slice(0, main.pathname.lastIndexOf("/")) || "/") ?? "unknown";
}

/**
 * The commit checked out in the git work tree at `directory` (12 hex digits,
 * `-dirty` when tracked files differ from it), or undefined outside one.
 */
export function gitCommit(directory: string): string | undefined {
  try {
    const described = captureOutput([
      "git",
      "-C",
      directory,
      "describe",
      "--always",
      "--dirty",
      "--abbrev=12",
    ]);
    return described.code === 0 && described.stdout.trim() ? described.stdout.trim() : undefined;
  } catch {
    return undefined; // no git
  }
}

/**
 * V8 flags a plug restarts with (app/cli/plug.ts): optimize the few hot
 * functions of the data path after a hundred calls instead of thousands,
 * straight to TurboFan, and the cable's loop, which runs for hundreds of
 * wake-ups per call, after fifty passes' worth of its code instead of five
 * hundred, so a fresh plug forwards at full speed within its first frames;
 * and `gc()`, with which the cable collects its warm-up's garbage before the
 * first frame rather than in a pause among the first frames (bench/README.md).
 */
export const V8_TUNING = "--no-maglev,--invocation-count-for-turbofan=100," +
  "--minimum-invocations-after-ic-update=2,--invocation-count-for-osr=50,--expose-gc";
/**
 * Restarts vdeno once, unless this is already the restarted copy, so that
 * every thread blocks `signals` (a signalfd in the data path's poll reads
 * them) and V8 runs with {@linkcode V8_TUNING} on top of DENO_V8_FLAGS;
 * `workers` adds the read permission a Worker needs (`--metrics`, several
 * data planes).
 */
export function restartForDataPath(signals: readonly number[], workers: boolean): void {
  if (blocksAll(signals)) return;
  const flags = [getEnv("DENO_V8_FLAGS"), V8_TUNING].filter(Boolean).join(",");
  const argv = workers ? withWorkerPermission() : undefined;
  restartWithSignalsBlocked(signals, { DENO_V8_FLAGS: flags }, argv);
}

/** Set in the background copy of `vdeno plug -d`, which tells its parent when it is ready. */
export const DAEMON_CHILD_VARIABLE = "VDENO_DAEMON_CHILD";

/**
 * The environment for a program vdeno starts (a `= COMMAND`, the command of
 * `vdeno ns`): ours without the variables that hold keys (`keyVariables`)
 * and without what vdeno set for itself, so that a child that is vdeno again
 * does not take itself for a daemon's copy.
 */
export function childEnvironment(keyVariables: readonly string[]): Record<string, string> {
  const env = environment();
  for (const name of keyVariables) delete env[name];
  delete env[DAEMON_CHILD_VARIABLE];
  const flags = env.DENO_V8_FLAGS;
  if (flags !== undefined) {
    const own = flags.split(",").filter((flag) => !V8_TUNING.split(",").includes(flag));
    if (own.length > 0) env.DENO_V8_FLAGS = own.join(",");
    else delete env.DENO_V8_FLAGS;
  }
  return env;
}
