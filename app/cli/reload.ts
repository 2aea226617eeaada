/**
 * `vdeno reload NAME|PID`: makes a running plug (or `vdeno ns`) re-read what
 * may change while it runs, through its control socket: today the `key=` of
 * its vxvde plugs, for a key change with no loss (see plugs/seal.ts). SIGHUP
 * keeps vde_plug's meaning: close and exit.
 *
 * @module
 */

import {
  controlDirectory,
  controlSockets,
  NoAnswer,
  queryStatus,
  type ReloadReport,
  requestReload,
} from "../control.ts";
import { positionalsOrHelp, UsageError } from "./usage.ts";

export const RELOAD_USAGE = `Usage:
  vdeno reload NAME|PID    make a running plug re-read its key= sources

A new key is used for receiving at once and for sending once the other
members show they have it (or after 30 s); the old one keeps working for
those that have not switched yet. A plug without key= has nothing to reload.`;

/** Runs `vdeno reload`; resolves to the exit code. */
export async function reloadCommand(args: string[]): Promise<number> {
  const positionals = positionalsOrHelp(args, RELOAD_USAGE);
  if (positionals === undefined) return 0;
  if (positionals.length !== 1) {
    throw new UsageError("reload takes one plug name or pid");
  }
  const target = positionals[0];
  const path = await find(target);
  let answer: ReloadReport | { error: string };
  try {
    answer = await requestReload(path);
  } catch (error) {
    if (error instanceof NoAnswer) throw new Error(`${target} gave no answer: ${error.message}`);
    throw error;
  }
  if ("error" in answer) throw new Error(`${target}: ${answer.error}`);
  let failed = false;
  if (answer.plugs.length === 0) console.log(`${answer.name}: nothing to reload (no key=)`);
  for (const plug of answer.plugs) {
    if (plug.error !== undefined) {
      failed = true;
      console.error(`vdeno reload: ${answer.name}: ${plug.vnl}: ${plug.error}`);
    } else console.log(`${answer.name}: ${plug.vnl}: ${plug.result}`);
  }
  return failed ? 1 : 0;
}

/** The control socket of the plug named `target`, or with pid `target`. */
async function find(target: string): Promise<string> {
  const sockets = controlSockets();
  const named = sockets.find((socket) => socket.name === target);
  if (named) return named.path;
  if (/^\d+$/.test(target)) {
    for (const socket of sockets) {
      try {
        if (String((await queryStatus(socket.path)).pid) === target) return socket.path;
      } catch {
        // A socket that does not answer is not the one.
      }
    }
  }
  throw new Error(`No running plug named ${target} (looked in ${controlDirectory()})`);
}
