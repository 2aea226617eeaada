/**
 * Reading a small private file (a key) through one descriptor: open it once,
 * `fstat` that descriptor and read from it, so the checks and the bytes
 * concern the same file, whatever happens to the path meanwhile. Needs only
 * FFI permission, no file system permission.
 *
 * @module
 */

import { check, closeQuietly, cString, errno, libc, SystemError } from "./libc.ts";

const O_RDONLY = 0, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
/** struct stat on x86-64 Linux: 144 bytes; st_mode at 24, st_uid at 28. */
const STAT_SIZE = 144;
const MODE_AT = 24, UID_AT = 28;
const S_IFMT = 0o170000, S_IFREG = 0o100000;

/** What `fstat` said about an opened file, and its first bytes when it is a regular file. */
export interface CheckedFile {
  /** The owner's user id. */
  uid: number;
  /** The permission bits (mode & 0o7777). */
  mode: number;
  /** Whether it is a regular file; only then were its bytes read. */
  regular: boolean;
  /** Up to `maxBytes` of its content; the caller zeroes it when it holds a secret. */
  bytes: Uint8Array<ArrayBuffer>;
}

/**
 * Opens `path` once (without blocking on a FIFO), `fstat`s the descriptor and,
 * if it is a regular file, reads at most `maxBytes` from it. Throws a
 * {@linkcode SystemError} when it cannot be opened or read.
 */
export function readCheckedFile(path: string, maxBytes: number): CheckedFile {
  const fd = libc.open(cString(path), O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) throw new SystemError("open", errno());
  try {
    const stat = new Uint8Array(STAT_SIZE);
    check(libc.fstat(fd, stat), "fstat");
    const view = new DataView(stat.buffer);
    const fullMode = view.getUint32(MODE_AT, true);
    const uid = view.getUint32(UID_AT, true);
    stat.fill(0);
    const regular = (fullMode & S_IFMT) === S_IFREG;
    const buffer = new Uint8Array(regular ? maxBytes : 0);
    let length = 0;
    while (length < buffer.length) {
      const got = libc.read(
        fd,
        Deno.UnsafePointer.offset(Deno.UnsafePointer.of(buffer)!, length),
        BigInt(buffer.length - length),
      );
      if (got < 0) {
        buffer.fill(0);
        throw new SystemError("read", errno());
      }
      if (got === 0) break;
      length += got;
    }
    return { uid, mode: fullMode & 0o7777, regular, bytes: buffer.subarray(0, length) };
  } finally {
    closeQuietly(fd);
  }
}

/** The effective user id of this process. */
export function effectiveUid(): number {
  return libc.geteuid();
}
