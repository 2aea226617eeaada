/**
 * What tests share: the namespace LANs of app/lab.ts (re-exported here, with
 * vdeno run from this checkout) and how a test says what it needs.
 *
 * @module
 */

import { have, onPath, setVdenoCommand } from "../app/lab.ts";

export {
  have,
  Host,
  Lan,
  type LanOptions,
  onPath,
  Process,
  run,
  type RunResult,
  sh,
  sleep,
  waitUntil,
} from "../app/lab.ts";

/** The command that runs vdeno from this checkout. */
export const VDENO = [
  Deno.execPath(),
  "run",
  "--allow-all",
  "--quiet",
  new URL("../main.ts", import.meta.url).pathname,
];
setVdenoCommand(VDENO);

/** A condition a test needs, and what to say when it does not hold. */
export interface Requirement {
  ok: boolean;
  why: string;
}

/** What a test needs, computed when it is registered (see {@linkcode requirements}). */
export interface Requirements {
  /** What is missing, one phrase each; empty when the test can run. */
  readonly missing: string[];
  /** True when something is missing outside CI: register the test with `ignore: needs.ignore`. */
  readonly ignore: boolean;
  /** In CI, throws when something is missing: call it first in the test. */
  check(name: string): void;
}

const IN_CI = Deno.env.get("CI") === "true";

/**
 * What a test needs, checked synchronously when the module loads: root (for
 * namespaces) unless `root: false`, `programs` on PATH and `extra` conditions.
 * Outside CI a test that misses one is ignored, with a loud line saying why;
 * in CI it is not ignored and {@linkcode Requirements.check} fails it.
 */
export function requirements(
  programs: string[],
  extra: Requirement[] = [],
  options: { root?: boolean } = {},
): Requirements {
  const missing: string[] = [];
  for (const program of programs) if (!onPath(program)) missing.push(`${program} is not installed`);
  if ((options.root ?? true) && Deno.uid() !== 0) {
    missing.push("the test needs root (network namespaces)");
  }
  for (const condition of extra) if (!condition.ok) missing.push(condition.why);
  return {
    missing,
    ignore: missing.length > 0 && !IN_CI,
    check(name: string) {
      if (missing.length > 0) {
        throw new Error(`Missing prerequisite in CI: ${name}: ${missing.join("; ")}`);
      }
    },
  };
}

/**
 * Registers a test that builds hosts: it needs root and `needs` (programs on
 * PATH, or {@linkcode requirements}). Outside CI it is ignored when they are
 * missing, and says so on stderr; in CI it fails.
 */
export function hostTest(
  name: string,
  needs: string[] | Requirements,
  fn: (t: Deno.TestContext) => void | Promise<void>,
): void {
  const required = Array.isArray(needs) ? requirements(needs) : needs;
  if (required.ignore) console.error(`!!! IGNORED ${name}: ${required.missing.join("; ")}`);
  Deno.test({
    name,
    ignore: required.ignore,
    fn: (t) => {
      required.check(name);
      return fn(t);
    },
  });
}

/**
 * Checks prerequisites while the test runs. In CI a missing one fails the
 * test; elsewhere it returns false and the test returns early, reported as
 * passing: prefer {@linkcode hostTest} or {@linkcode requirements}, which
 * report such a test as ignored.
 */
export async function prerequisites(
  t: Deno.TestContext,
  programs: string[],
  extra: Requirement[] = [],
): Promise<boolean> {
  const missing: string[] = [];
  for (const program of programs) {
    if (!(await have(program))) missing.push(`${program} is not installed`);
  }
  if (Deno.uid() !== 0) missing.push("the test needs root (network namespaces)");
  for (const condition of extra) if (!condition.ok) missing.push(condition.why);
  if (missing.length === 0) return true;
  const message = `${t.name}: ${missing.join("; ")}`;
  if (IN_CI) throw new Error(`Missing prerequisite in CI: ${message}`);
  console.error(`\n!!! SKIPPED ${message}\n`);
  return false;
}
