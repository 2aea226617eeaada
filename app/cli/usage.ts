/**
 * Command line errors: one line that says what was wrong, and where to look.
 *
 * @module
 */

import { parseArgs } from "node:util";

/** A command line that cannot be run as given. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * The positional arguments of a command whose one option is `--help` (`-h`);
 * undefined once `usage` is printed for `--help`.
 */
export function positionalsOrHelp(args: string[], usage: string): string[] | undefined {
  const { values, positionals } = parseArgs({
    args,
    options: { help: { type: "boolean", short: "h" } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    console.log(usage);
    return undefined;
  }
  return positionals;
}
