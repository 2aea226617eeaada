/**
 * `deno task install`: puts a `vdeno` command on PATH, the bundled single
 * file (tools/bundle.ts) with a `deno run` shebang: /usr/local/bin/vdeno for
 * root, ~/.deno/bin/vdeno otherwise, or PREFIX/bin/vdeno with --prefix.
 * `deno task uninstall` (--uninstall) removes it.
 *
 * Usage: deno run -A tools/install.ts [--prefix DIR] [--uninstall]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { bundle } from "./bundle.ts";

const USAGE = "Usage: deno task install [--prefix DIR]; deno task uninstall [--prefix DIR]";

function binDirectory(prefix: string | undefined): string {
  if (prefix !== undefined) return `${prefix.replace(/\/$/, "")}/bin`;
  if (Deno.uid() === 0) return "/usr/local/bin";
  const home = Deno.env.get("HOME");
  if (!home) throw new Error("HOME is not set: give --prefix DIR to install in DIR/bin");
  return `${home}/.deno/bin`;
}

async function main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: Deno.args,
      options: {
        prefix: { type: "string" },
        uninstall: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }).values;
  } catch (error) {
    console.error(`install: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  try {
    const directory = binDirectory(values.prefix);
    const target = `${directory}/vdeno`;
    if (values.uninstall) {
      try {
        await Deno.remove(target);
        console.log(`Removed ${target}`);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
        console.log(`Nothing to remove: ${target} does not exist`);
      }
      return 0;
    }
    await Deno.mkdir(directory, { recursive: true });
    // Built beside the target and renamed over it, so a running vdeno keeps its file.
    const temporary = `${target}.${Deno.pid}.tmp`;
    try {
      await bundle(temporary);
      await Deno.rename(temporary, target);
    } finally {
      await Deno.remove(temporary).catch(() => {});
    }
    console.log(`Installed ${target}`);
    const path = (Deno.env.get("PATH") ?? "").split(":");
    if (!path.includes(directory)) {
      console.log(
        `${directory} is not on your PATH: add it, e.g. export PATH="${directory}:$PATH"`,
      );
    }
    return 0;
  } catch (error) {
    console.error(`install: ${(error as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main());
