/**
 * Reads and writes on descriptors for the data path: read(2), readv(2),
 * write(2) and writev(2) as they are, so a plug's hot loop costs one FFI call
 * each, and descriptor moves (dup2). Results are byte counts, or -1 with the
 * reason in {@linkcode errno}.
 *
 * @module
 */

import { O_CLOEXEC } from "./abi.ts";
import { closeQuietly, cString, libc } from "./libc.ts";

/** read(2) of up to `length` bytes into `buffer`: bytes read, 0 at the end, -1 on error. */
export function readInto(fd: number, buffer: Deno.PointerValue, length: bigint): number {
  return libc.read(fd, buffer, length);
}

/** readv(2) into the `count` iovecs at `iovecs`. */
export function readVector(fd: number, iovecs: Deno.PointerValue, count: number): number {
  return libc.readv(fd, iovecs, count);
}

/** write(2) of `length` bytes from `buffer`: bytes written, -1 on error. */
export function writeFrom(fd: number, buffer: Deno.PointerValue, length: bigint): number {
  return libc.write(fd, buffer, length);
}

/** writev(2) of the `count` iovecs at `iovecs`. */
export function writeVector(fd: number, iovecs: Deno.PointerValue, count: number): number {
  return libc.writev(fd, iovecs, count);
}

/** Makes descriptor `target` another name for `source` (dup2); false when it failed. */
export function duplicateOnto(source: number, target: number): boolean {
  return libc.dup2(source, target) >= 0;
}

/** Points descriptor `fd` (say 2, stderr) at /dev/null; false when /dev/null cannot be opened. */
export function silence(fd: number): boolean {
  const O_RDWR = 2;
  const devNull = libc.open(cString("/dev/null"), O_RDWR | O_CLOEXEC, 0);
  if (devNull < 0) return false;
  const moved = duplicateOnto(devNull, fd);
  closeQuietly(devNull);
  return moved;
}
