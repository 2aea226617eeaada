/**
 * `deno task bundle`: dist/vdeno.js, the whole of vdeno in one file (the
 * data-plane Worker of `vdeno ns` re-enters the same file), stamped with the
 * commit it was built from so that `vdeno --version` can say it anywhere.
 *
 * Usage: deno run -A tools/bundle.ts [--output FILE]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { gitCommit } from "../app/self.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * The first line of the bundled file: it runs as a command. `--no-config`
 * keeps a deno.json in the caller's directory out of it.
 */
export const SHEBANG = "#!/usr/bin/env -S deno run --allow-all --no-config --quiet";

/** Bundles main.ts into `output`, with the shebang and the build stamp. */
export async function bundle(output: string): Promise<void> {
  const built = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--output", output, `${ROOT}/main.ts`],
    stdin: "null",
  }).output();
  if (!built.success) {
    throw new Error(`deno bundle failed: ${new TextDecoder().decode(built.stderr).trim()}`);
  }
  const text = await Deno.readTextFile(output);
  const body = text.startsWith("#!") ? text.slice(text.indexOf("\n") + 1) : text;
  const stamp = { commit: gitCommit(ROOT) ?? "unknown" };
  await Deno.writeTextFile(
    output,
    `${SHEBANG}\nglobalThis.VDENO_BUILD = ${JSON.stringify(stamp)};\n${body}`,
    { mode: 0o755 },
  );
  await Deno.chmod(output, 0o755);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { output: { type: "string", default: `${ROOT}/dist/vdeno.js` } },
    strict: true,
  });
  try {
    const output = values.output!;
    const slash = output.lastIndexOf("/");
    if (slash > 0) await Deno.mkdir(output.slice(0, slash), { recursive: true });
    await bundle(output);
    console.log(`Wrote ${output}`);
  } catch (error) {
    console.error(`bundle: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
