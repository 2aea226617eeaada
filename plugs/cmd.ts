/**
 * `cmd://COMMAND`: the network is a command's stdin and stdout, carrying
 * frames in the vde_plug stream format, as vdeplug4's cmd module.
 * `"cmd://ssh host vde_plug vxvde://"` reaches a cloud on another machine.
 * Everything after `cmd://` is the command line, split as a shell splits
 * words (quotes and backslashes; no variables, globs or pipes).
 *
 * The plug ends when the command closes its output; closing the plug sends
 * the command SIGTERM and reaps it.
 *
 * @module
 */

import { SIGTERM } from "../ffi/abi.ts";
import { closeQuietly } from "../ffi/libc.ts";
import { pipe, reap, signalProcess, spawn } from "../ffi/spawn.ts";
import { VnlError } from "../core/vnl.ts";
import { StreamPlug } from "./stream.ts";

/** How long closing waits for the command to exit after SIGTERM. */
const REAP_WAIT_MS = 500;

/** Splits a command line into words as a POSIX shell does for quotes and backslashes. */
export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new VnlError(`Unterminated ' in cmd:// command line: ${line}`);
      word += line.slice(i + 1, end);
      inWord = true;
      i = end;
    } else if (c === '"') {
      inWord = true;
      for (i++;; i++) {
        if (i >= line.length) {
          throw new VnlError(`Unterminated " in cmd:// command line: ${line}`);
        }
        if (line[i] === '"') break;
        if (line[i] === "\\" && '"\\$`'.includes(line[i + 1] ?? "")) i++;
        word += line[i];
      }
    } else if (c === "\\") {
      if (i + 1 < line.length) word += line[++i];
      inWord = true;
    } else if (c === " " || c === "\t" || c === "\n") {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
}

/** A plug on a command's stdin and stdout. */
export class CmdPlug extends StreamPlug {
  readonly #pid: number;
  #ended = false;

  constructor(vnl: string, rest: string) {
    const argv = splitCommandLine(rest);
    if (argv.length === 0) {
      throw new VnlError(`Missing command: use cmd://COMMAND, e.g. "cmd://vde_plug vxvde://"`);
    }
    const toChild = pipe(), fromChild = pipe();
    let pid: number;
    try {
      pid = spawn(argv, { descriptors: { 0: toChild.read, 1: fromChild.write } });
    } catch (error) {
      for (const fd of [toChild.read, toChild.write, fromChild.read, fromChild.write]) {
        closeQuietly(fd);
      }
      throw new Error(`Cannot open ${vnl}: ${(error as Error).message}`);
    } finally {
      closeQuietly(toChild.read);
      closeQuietly(fromChild.write);
    }
    super(vnl, fromChild.read, toChild.write, true);
    this.#pid = pid;
  }

  describe(): Record<string, unknown> {
    return { pid: this.#pid };
  }

  override close(): void {
    super.close();
    if (this.#ended) return;
    this.#ended = true;
    if (reap(this.#pid)) return;
    signalProcess(this.#pid, SIGTERM);
    // A short wait, so that no zombie is left behind; a command slower than that to exit stays
    // one until vdeno exits, rather than hold up the close.
    const pause = new Int32Array(new SharedArrayBuffer(4));
    for (let waited = 0; waited < REAP_WAIT_MS && !reap(this.#pid); waited += 10) {
      Atomics.wait(pause, 0, 0, 10);
    }
  }
}
