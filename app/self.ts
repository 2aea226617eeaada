/**
 * How to start vdeno again as a child process (daemon mode, namespace
 * helpers): the compiled executable alone, or `deno run` with the main module
 * (main.ts from a checkout, or the bundled single file).
 *
 * @module
 */

import { environment } from "../ffi/os.ts";

/** The argv prefix that runs vdeno again. */
export function selfCommand(): string[] {
  const exec = Deno.execPath();
  if (!/(^|\/)deno$/.test(exec)) return [exec];
  return [exec, "run", "--allow-all", "--quiet", new URL(Deno.mainModule).pathname];
}

/** Whether this code runs inside a Worker. */
export function inWorker(): boolean {
  const scope = (globalThis as { WorkerGlobalScope?: new () => unknown }).WorkerGlobalScope;
  return scope !== undefined && self instanceof scope;
}

/**
 * V8 flags a plug restarts with (app/cli/plug.ts): optimize the few hot
 * functions of the data path after a hundred calls instead of thousands,
 * straight to TurboFan, so a fresh plug forwards at full speed within its
 * first frames (bench/README.md).
 */
export const V8_TUNING =
  "--no-maglev,--invocation-count-for-turbofan=100,--minimum-invocations-after-ic-update=2";
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
