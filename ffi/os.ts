/**
 * The process's surroundings through libc: environment variables, user ids,
 * files, directories and the host's interface addresses.
 *
 * Deno's own APIs for these ask for `--allow-env`, `--allow-read`,
 * `--allow-write` or `--allow-sys`; vdeno already holds `--allow-ffi`, which
 * can do all of it, so `vdeno plug`, `vdeno ns`, `vdeno status` and the
 * library run with exactly `--allow-net --allow-ffi`.
 *
 * @module
 */

import { AF_INET, AF_INET6, O_CLOEXEC } from "./abi.ts";
import { check, cString, Errno, errno, libc, SystemError } from "./libc.ts";

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_TRUNC = 0o1000;
const O_NOCTTY = 0o400;
const O_NOFOLLOW = 0o400000;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFSOCK = 0o140000;
const S_IFLNK = 0o120000;
/** struct stat on x86_64 Linux: st_mode at 24, st_uid at 28, st_size at 48. */
const STAT_SIZE = 144;
/** struct dirent on 64-bit Linux: d_name starts at byte 19. */
const DIRENT_NAME = 19;
/** struct ifaddrs: ifa_next at 0, ifa_name at 8, ifa_addr at 24. */
const IFADDRS_NAME = 8;
const IFADDRS_ADDR = 24;

/** The value of the environment variable `name`, or undefined when it is not set. */
export function getEnv(name: string): string | undefined {
  const value = libc.getenv(cString(name));
  return value === null ? undefined : Deno.UnsafePointerView.getCString(value);
}

/** The whole environment of the process, as `Deno.env.toObject()` gives it. */
export function environment(): Record<string, string> {
  const env: Record<string, string> = {};
  const array = new Deno.UnsafePointerView(libc.environ!).getPointer(0);
  if (array === null) return env;
  const entries = new Deno.UnsafePointerView(array);
  for (let i = 0;; i++) {
    const entry = entries.getPointer(i * 8);
    if (entry === null) return env;
    const line = Deno.UnsafePointerView.getCString(entry);
    const equals = line.indexOf("=");
    if (equals > 0) env[line.slice(0, equals)] = line.slice(equals + 1);
  }
}

/** The real user id of the process. */
export function userId(): number {
  return libc.getuid();
}

/** The running kernel's version, major and minor: [6, 18] for a release "6.18.44-...". */
export function kernelVersion(): [number, number] {
  const names = new Uint8Array(6 * 65); // struct utsname: six fields of 65 bytes
  if (libc.uname(names) < 0) return [0, 0];
  const release = new TextDecoder().decode(names.subarray(130, names.indexOf(0, 130)));
  const [major, minor] = release.split(".").map((part) => parseInt(part, 10));
  return [major || 0, minor || 0];
}

/** The real group id of the process. */
export function groupId(): number {
  return libc.getgid();
}

/** What stat says about a file. */
export interface FileInfo {
  /** The permission bits (mode & 0o7777). */
  mode: number;
  /** The owner's user id. */
  uid: number;
  size: number;
  isFile: boolean;
  isDirectory: boolean;
  isSocket: boolean;
  /** Only when not followed. */
  isSymlink: boolean;
}

function fileInfoFrom(buffer: Uint8Array<ArrayBuffer>): FileInfo {
  const view = new DataView(buffer.buffer);
  const mode = view.getUint32(24, true);
  return {
    mode: mode & 0o7777,
    uid: view.getUint32(28, true),
    size: Number(view.getBigInt64(48, true)),
    isFile: (mode & S_IFMT) === S_IFREG,
    isDirectory: (mode & S_IFMT) === S_IFDIR,
    isSocket: (mode & S_IFMT) === S_IFSOCK,
    isSymlink: (mode & S_IFMT) === S_IFLNK,
  };
}

/**
 * The file at `path` (followed through symbolic links, unless `follow` is
 * false), or undefined when there is none.
 * @throws {SystemError} when it cannot be looked at (e.g. permission denied)
 */
export function fileInfo(path: string, follow = true): FileInfo | undefined {
  const buffer = new Uint8Array(STAT_SIZE);
  const result = follow ? libc.stat(cString(path), buffer) : libc.lstat(cString(path), buffer);
  if (result === 0) return fileInfoFrom(buffer);
  if (errno() === Errno.ENOENT || errno() === Errno.ENOTDIR) return undefined;
  throw new SystemError(path, errno());
}

/**
 * The bytes of the file at `path` and what fstat says about the very file
 * read (no one can swap it between the look and the read).
 * @throws {SystemError} "PATH: No such file or directory" and the like
 */
export function readFileWithInfo(path: string): { bytes: Uint8Array; info: FileInfo } {
  const fd = libc.open(cString(path), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) throw new SystemError(path, errno());
  try {
    const stat = new Uint8Array(STAT_SIZE);
    check(libc.fstat(fd, stat), path);
    const info = fileInfoFrom(stat);
    if (info.isDirectory) throw new SystemError(path, Errno.EISDIR);
    let bytes = new Uint8Array(Math.max(info.size + 1, 4096));
    let length = 0;
    for (;;) {
      if (length === bytes.length) {
        const bigger = new Uint8Array(bytes.length * 2);
        bigger.set(bytes);
        bytes = bigger;
      }
      const count = libc.read(
        fd,
        Deno.UnsafePointer.of(bytes.subarray(length)),
        BigInt(bytes.length - length),
      );
      if (count < 0) {
        if (errno() === Errno.EINTR) continue;
        throw new SystemError(path, errno());
      }
      if (count === 0) return { bytes: bytes.subarray(0, length), info };
      length += count;
    }
  } finally {
    libc.close(fd);
  }
}

/** The text of the file at `path`, e.g. `/proc/self/cmdline`. */
export function readTextFile(path: string): string {
  return new TextDecoder().decode(readFileWithInfo(path).bytes);
}

/**
 * Writes `text` to the file at `path` with permission bits `mode`, which
 * apply from its creation on. With `createNew`, an existing file is an error.
 */
export function writeTextFile(
  path: string,
  text: string,
  options: { mode?: number; createNew?: boolean } = {},
): void {
  const flags = O_WRONLY | O_CREAT | O_CLOEXEC | (options.createNew ? O_EXCL : O_TRUNC);
  const mode = options.mode ?? 0o644;
  const fd = libc.open(cString(path), flags, mode);
  if (fd < 0) throw new SystemError(path, errno());
  try {
    writeFully(fd, new TextEncoder().encode(text), path);
  } finally {
    libc.close(fd);
  }
}

/**
 * Opens the file at `path` for writing from its start, for output that may
 * be sensitive (captured frames, a pidfile written as root), and returns the
 * descriptor. The file is made mode `mode` (0600) from its creation on and is
 * never reached through a symbolic link: a new path is created exclusively;
 * an existing regular file is replaced by a new one (made under a temporary
 * name beside it, then renamed over it), so nothing is written into a file
 * another user made or linked; a symbolic link is refused; a FIFO or device
 * is opened as it is.
 * @throws {SystemError} naming `path`, or an Error for a symbolic link
 */
export function createPrivateFile(path: string, mode = 0o600): number {
  const exclusive = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  const info = fileInfo(path, false);
  if (info === undefined) return check(libc.open(cString(path), exclusive, mode), path);
  if (info.isSymlink) throw new Error(`${path} is a symbolic link; give the file's own path`);
  if (info.isDirectory) throw new SystemError(path, Errno.EISDIR);
  if (!info.isFile) {
    return check(libc.open(cString(path), O_WRONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0), path);
  }
  const slash = path.lastIndexOf("/");
  const directory = slash < 0 ? "." : path.slice(0, slash + 1);
  const base = path.slice(slash + 1);
  const random = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  const temporary = `${directory}${slash < 0 ? "/" : ""}.${base}.${random}.tmp`;
  const fd = check(libc.open(cString(temporary), exclusive, mode), path);
  if (libc.rename(cString(temporary), cString(path)) < 0) {
    const code = errno();
    libc.close(fd);
    libc.unlink(cString(temporary));
    throw new SystemError(path, code);
  }
  return fd;
}

/** Writes all of `bytes` to `fd`; `what` names it in the error. */
export function writeFully(fd: number, bytes: Uint8Array, what: string): void {
  for (let done = 0; done < bytes.length;) {
    const count = libc.write(
      fd,
      Deno.UnsafePointer.of(bytes.subarray(done)),
      BigInt(bytes.length - done),
    );
    if (count < 0 && errno() === Errno.EINTR) continue;
    check(count, what);
    done += count;
  }
}

/**
 * Makes the directory `path` with permission bits `mode`, and its missing
 * parents (with the same bits); an existing directory is left as it is.
 */
export function makeDirectory(path: string, mode: number): void {
  if (libc.mkdir(cString(path), mode) === 0 || errno() === Errno.EEXIST) return;
  if (errno() !== Errno.ENOENT) throw new SystemError(path, errno());
  const parent = path.replace(/\/+[^/]*\/*$/, "");
  if (parent === "" || parent === path) throw new SystemError(path, Errno.ENOENT);
  makeDirectory(parent, mode);
  if (libc.mkdir(cString(path), mode) === 0 || errno() === Errno.EEXIST) return;
  throw new SystemError(path, errno());
}

/** Sets the permission bits of `path`. */
export function changeMode(path: string, mode: number): void {
  check(libc.chmod(cString(path), mode), path);
}

/** Removes the file (not directory) at `path`; false when there was none. */
export function removeFile(path: string): boolean {
  if (libc.unlink(cString(path)) === 0) return true;
  if (errno() === Errno.ENOENT) return false;
  throw new SystemError(path, errno());
}

/** Renames `from` to `to`, replacing `to`. */
export function renameFile(from: string, to: string): void {
  check(libc.rename(cString(from), cString(to)), to);
}

/** The names in the directory at `path`, without `.` and `..`. */
export function listDirectory(path: string): string[] {
  const directory = libc.opendir(cString(path));
  if (directory === null) throw new SystemError(path, errno());
  const names: string[] = [];
  try {
    for (;;) {
      const entry = libc.readdir(directory);
      if (entry === null) return names;
      const name = Deno.UnsafePointerView.getCString(entry, DIRENT_NAME);
      if (name !== "." && name !== "..") names.push(name);
    }
  } finally {
    libc.closedir(directory);
  }
}

/** The absolute path `path` names, with every symbolic link, `.` and `..` resolved. */
export function realPath(path: string): string {
  const resolved = new Uint8Array(4096); // PATH_MAX
  if (libc.realpath(cString(path), resolved) === null) throw new SystemError(path, errno());
  return new TextDecoder().decode(resolved.subarray(0, resolved.indexOf(0)));
}

/** Gives the file at `path` to group `gid`, its owner unchanged. */
export function changeGroup(path: string, gid: number): void {
  check(libc.chown(cString(path), 0xffffffff, gid), path);
}

/** The target of the symbolic link at `path`. */
export function readLink(path: string): string {
  const buffer = new Uint8Array(4096);
  const length = Number(libc.readlink(cString(path), buffer, BigInt(buffer.length)));
  if (length < 0) throw new SystemError(path, errno());
  return new TextDecoder().decode(buffer.subarray(0, length));
}

/** The running executable (deno, or a compiled vdeno), as the kernel knows it. */
export function executablePath(): string {
  return readLink("/proc/self/exe");
}

/** One address of one of this host's interfaces. */
export interface InterfaceAddress {
  /** The interface's name, e.g. `eth0`. */
  name: string;
  /** AF_INET (2) or AF_INET6 (10). */
  family: number;
  /** The address: 4 or 16 bytes. */
  ip: Uint8Array;
}

/** The IPv4 and IPv6 addresses of this host's interfaces (getifaddrs). */
export function interfaceAddresses(): InterfaceAddress[] {
  const head = new BigUint64Array(1);
  check(libc.getifaddrs(new Uint8Array(head.buffer)), "getifaddrs");
  const first = Deno.UnsafePointer.create(head[0]);
  const addresses: InterfaceAddress[] = [];
  try {
    for (let node = first; node !== null;) {
      const view = new Deno.UnsafePointerView(node);
      const name = view.getPointer(IFADDRS_NAME);
      const address = view.getPointer(IFADDRS_ADDR);
      if (name !== null && address !== null) {
        const sockaddr = new Deno.UnsafePointerView(address);
        const family = sockaddr.getUint16(0);
        const ip = family === AF_INET
          ? new Uint8Array(sockaddr.getArrayBuffer(4, 4).slice(0))
          : family === AF_INET6
          ? new Uint8Array(sockaddr.getArrayBuffer(16, 8).slice(0))
          : undefined;
        if (ip) addresses.push({ name: Deno.UnsafePointerView.getCString(name), family, ip });
      }
      node = view.getPointer(0);
    }
  } finally {
    libc.freeifaddrs(first);
  }
  return addresses;
}
