#!/usr/bin/env -S deno run --allow-all
/**
 * vdeno: VDE's Local Area Cloud (vxvde) in TypeScript on Deno.
 *
 * The command line: `vdeno plug` (vde_plug), `vdeno ns` (vdens), `vdeno demo`,
 * `vdeno status`, `vdeno randmac`, `vdeno keygen`.
 *
 * @module
 */

import denoConfig from "./deno.json" with { type: "json" };
import { UsageError } from "./app/cli/usage.ts";

const USAGE = `vdeno ${denoConfig.version}: VDE's Local Area Cloud (vxvde) on Deno

Usage: vdeno COMMAND [ARGS...]

Commands:
  plug VNL [VNL | = COMMAND...]   plug networks together (like vde_plug)
  ns [VNL [COMMAND [ARGS...]]]    a command in a namespace on a network (like vdens)
  status [NAME|PID]               running plugs, counters, learned MACs
  reload NAME|PID                 make a running plug re-read its key= (key rotation)
  demo                            build a demo Local Area Cloud of namespaces
  randmac                         print a random locally administered MAC
  keygen FILE                     write a new key for a keyed network (key=FILE)
  version                         print the version, the commit and Deno's version

Run 'vdeno COMMAND --help' for a command's options.`;

type Command = (args: string[]) => Promise<number> | number;

const commands: Record<string, Command> = {
  plug: async (args) => (await import("./app/cli/plug.ts")).plugCommand(args),
  ns: async (args) => (await import("./app/cli/ns.ts")).nsCommand(args),
  "ns-helper": async (args) => (await import("./app/cli/ns.ts")).nsHelperCommand(args),
  demo: async (args) => (await import("./app/cli/demo.ts")).demoCommand(args),
  randmac: async (args) => (await import("./app/cli/randmac.ts")).randmacCommand(args),
  status: async (args) => (await import("./app/cli/status.ts")).statusCommand(args),
  reload: async (args) => (await import("./app/cli/reload.ts")).reloadCommand(args),
  keygen: async (args) => (await import("./app/cli/keygen.ts")).keygenCommand(args),
  version: async () => {
    const { buildCommit } = await import("./app/self.ts");
    console.log(`vdeno ${denoConfig.version} (commit ${buildCommit()}, deno ${Deno.version.deno})`);
    return 0;
  },
};

/** Runs the command line `args`; resolves to the exit code. */
export async function main(args: string[]): Promise<number> {
  // `deno task vdeno -- status` and `deno task demo -- --keep` pass their `--` on.
  const [name, ...given] = args[0] === "--" ? args.slice(1) : args;
  // Right after the command a `--` ends no options, except for ns, which gives it a meaning.
  const rest = given[0] === "--" && name !== "ns" ? given.slice(1) : given;
  if (name === undefined || name === "-h" || name === "--help" || name === "help") {
    console.log(USAGE);
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-V") return await commands.version([]);
  const command = commands[name];
  if (!command) {
    console.error(
      `vdeno: unknown command ${JSON.stringify(name)}; run 'vdeno --help' for the list`,
    );
    return 2;
  }
  try {
    return await command(rest);
  } catch (error) {
    const message = oneLine(error instanceof Error ? error.message : String(error));
    const permission = missingPermission(message);
    if (permission) {
      console.error(`vdeno ${name}: ${permission}`);
      return 1;
    }
    if (error instanceof UsageError || isParseArgsError(error)) {
      console.error(`vdeno ${name}: ${message}; run 'vdeno ${name} --help' for usage`);
      return 2;
    }
    console.error(`vdeno ${name}: ${message}`);
    const os = await import("./ffi/os.ts").catch(() => undefined);
    if (os?.getEnv("VDENO_DEBUG")) console.error(error);
    return 1;
  }
}

/**
 * Escapes control characters: messages quote the user's input (a VNL with a
 * newline in it), and the error must stay on one line.
 */
function oneLine(message: string): string {
  return message.replace(
    // deno-lint-ignore no-control-regex
    /[\u0000-\u001f\u007f]/g,
    (c) =>
      c === "\n"
        ? "\\n"
        : c === "\t"
        ? "\\t"
        : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

const PERMISSION_PURPOSES: Record<string, string> = {
  read: "read",
  write: "write",
  env: "read the environment variable",
  run: "run",
  net: "reach",
  sys: "ask the system for",
  ffi: "load",
  import: "import",
};

/**
 * One line for a permission Deno refused (Deno.errors.NotCapable), wherever
 * it was wrapped: the flag to add and what it was needed for.
 */
function missingPermission(message: string): string | undefined {
  const match = /Requires (\w+) access(?: to "?([^",]*)"?)?, run again with the (--allow-\w+) flag/
    .exec(message);
  if (!match) return undefined;
  const [, kind, target, flag] = match;
  const purpose = `${PERMISSION_PURPOSES[kind] ?? `use ${kind}`}${target ? ` ${target}` : ""}`;
  return `Needs ${flag} to ${purpose}: run deno with ${flag} (or -A)`;
}

function isParseArgsError(error: unknown): boolean {
  return error instanceof Error && "code" in error &&
    String((error as { code: unknown }).code).startsWith("ERR_PARSE_ARGS");
}

/**
 * Whether this code runs inside a Worker. (Here rather than in app/, whose
 * modules load libc on import: without --allow-ffi that must fail inside
 * main()'s error handling, as one line.)
 */
function inWorker(): boolean {
  const scope = (globalThis as { WorkerGlobalScope?: new () => unknown }).WorkerGlobalScope;
  return scope !== undefined && self instanceof scope;
}

if (inWorker()) {
  const name = (self as unknown as { name: string }).name;
  if (name === "vdeno-metrics") (await import("./app/metrics.ts")).runMetricsWorker();
  else (await import("./app/dataplane.ts")).runDataPlaneWorker();
} else if (import.meta.main) Deno.exit(await main(Deno.args));
