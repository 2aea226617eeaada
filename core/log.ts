/**
 * Messages on stderr with a level and a time, and optionally syslog (as
 * `vde_plug -l` logs start and stop).
 *
 * @module
 */

import { closeQuietly } from "../ffi/libc.ts";
import { openDevNull, spawn, waitBlocking } from "../ffi/spawn.ts";

export type LogLevel = "error" | "warn" | "info" | "debug";
const LEVELS: LogLevel[] = ["error", "warn", "info", "debug"];

let threshold = LEVELS.indexOf("warn");
let syslogTag: string | undefined;

/** Sets the least severe level printed; throws on an unknown level name. */
export function setLogLevel(level: string): void {
  const index = LEVELS.indexOf(level as LogLevel);
  if (index < 0) throw new Error(`Bad log level: ${level}; use one of ${LEVELS.join(", ")}`);
  threshold = index;
}

/** The least severe level printed, to hand to a Worker (each has its own copy of this module). */
export function logLevel(): LogLevel {
  return LEVELS[threshold];
}

/** Whether lines at `level` are printed: to skip building a message nobody reads. */
export function logs(level: LogLevel): boolean {
  return LEVELS.indexOf(level) <= threshold;
}

/** Sends start/stop and errors to syslog too, under `tag`. */
export function enableSyslog(tag = "vdeno"): void {
  syslogTag = tag;
}

/** Logs one line at `level`. */
export function log(level: LogLevel, message: string): void {
  if (LEVELS.indexOf(level) <= threshold) {
    const time = new Date().toISOString();
    console.error(`${time} vdeno ${level}: ${message}`);
  }
}

/** Logs to syslog when enabled (and to stderr at `level`, info by default). */
export function logEvent(message: string, level: LogLevel = "info"): void {
  log(level, message);
  if (syslogTag === undefined) return;
  let devNull = -1;
  try {
    devNull = openDevNull();
    const pid = spawn(["logger", "-t", syslogTag, `--id=${Deno.pid}`, message], {
      descriptors: { 0: devNull, 1: devNull, 2: devNull },
    });
    waitBlocking(pid);
  } catch {
    // No logger program: syslog is best effort, stderr already has it.
  } finally {
    closeQuietly(devNull);
  }
}
