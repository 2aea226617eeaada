/**
 * How to start vdeno again as a child process (daemon mode, namespace
 * helpers): the compiled executable alone, or `deno run` with the main module
 * (main.ts from a checkout, or the bundled single file).
 *
 * @module
 */

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
