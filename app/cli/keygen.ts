/**
 * `vdeno keygen FILE`: writes a new random key for a keyed vxvde network
 * (`vxvde://GROUP/key=FILE`), readable by its owner only.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  changeMode,
  fileInfo,
  makeDirectory,
  removeFile,
  renameFile,
  writeTextFile,
} from "../../ffi/os.ts";
import { newKeyText } from "../../plugs/seal.ts";
import { UsageError } from "./usage.ts";

export const KEYGEN_USAGE = `Usage: vdeno keygen [OPTIONS] FILE

Writes a new random 256-bit key (64 hex digits) to FILE with mode 0600,
creating its directory (mode 0700) if it is missing.
Give the same file to every plug of a network: vxvde://239.0.0.1/key=FILE
(quote a path with slashes: key='/etc/vdeno/lan.key'), or put its content
in an environment variable NAME and use key=env:NAME.

Options:
  -f, --force   replace FILE if it exists
  -h, --help    show this help`;

/** Runs `vdeno keygen`; resolves to the exit code. */
export function keygenCommand(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    options: {
      force: { type: "boolean", short: "f" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    console.log(KEYGEN_USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError("keygen takes one FILE");
  const path = positionals[0];
  if (!values.force && fileInfo(path, false)) {
    throw new Error(`${path} exists; use --force to replace it`);
  }
  const slash = path.lastIndexOf("/");
  const directory = slash > 0 ? path.slice(0, slash) : undefined;
  try {
    if (directory && !fileInfo(directory)) makeDirectory(directory, 0o700);
  } catch (error) {
    throw new Error(`Cannot create the directory of ${path}: ${(error as Error).message}`);
  }
  // Write to a private temporary file then rename, so the key is never readable by others.
  const temporary = `${path}.${Deno.pid}.tmp`;
  try {
    writeTextFile(temporary, newKeyText(), { mode: 0o600, createNew: true });
    changeMode(temporary, 0o600);
    renameFile(temporary, path);
  } catch (error) {
    try {
      removeFile(temporary);
    } catch { /* never created */ }
    const reason = (error as Error).message.replace(`${temporary}: `, "");
    throw new Error(`Cannot write ${path}: ${reason}`);
  }
  return 0;
}
