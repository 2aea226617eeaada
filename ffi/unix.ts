/**
 * Unix domain socket pairs that carry descriptors (SCM_RIGHTS), the way
 * `vdeno ns` hands a TAP created inside a namespace to the process outside.
 *
 * Messages are SOCK_SEQPACKET records: each send arrives as one receive, with
 * its descriptors, so no framing is needed.
 *
 * @module
 */

import {
  AF_UNIX,
  F_SETFD,
  FD_CLOEXEC,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  SOCK_STREAM,
  SOL_SOCKET,
} from "./abi.ts";
import { addressOf, check, Errno, errno, libc, SystemError } from "./libc.ts";
import { POLLERR, POLLHUP, POLLIN, PollSet } from "./poll.ts";

const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;

// struct msghdr on 64-bit Linux: name, namelen(+pad), iov, iovlen, control, controllen, flags(+pad)
const MSGHDR_SIZE = 56;
// struct cmsghdr: size_t len, int level, int type, then the data
const CMSG_HEADER = 16;
/** The most descriptors one message carries. */
export const MAX_DESCRIPTORS = 64;

/** A connected pair of SOCK_SEQPACKET sockets; both close on exec. */
export function socketPair(): [number, number] {
  const fds = new Int32Array(2);
  check(
    libc.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, new Uint8Array(fds.buffer)),
    "socketpair",
  );
  return [fds[0], fds[1]];
}

/** Marks an inherited descriptor close-on-exec, so commands started later do not get it. */
export function setCloseOnExec(fd: number): void {
  check(libc.fcntl(fd, F_SETFD, FD_CLOEXEC), "fcntl(F_SETFD)");
}

/** One received message: its bytes and the descriptors that came with it (close-on-exec). */
export interface UnixMessage {
  data: Uint8Array<ArrayBuffer>;
  descriptors: number[];
}

function messageHeader(
  data: Uint8Array<ArrayBuffer>,
  control: Uint8Array<ArrayBuffer>,
  iovec: BigUint64Array<ArrayBuffer>,
): Uint8Array<ArrayBuffer> {
  iovec[0] = addressOf(data);
  iovec[1] = BigInt(data.length);
  const header = new Uint8Array(MSGHDR_SIZE);
  const view = new DataView(header.buffer);
  view.setBigUint64(16, addressOf(new Uint8Array(iovec.buffer)), true);
  view.setBigUint64(24, 1n, true);
  if (control.length > 0) {
    view.setBigUint64(32, addressOf(control), true);
    view.setBigUint64(40, BigInt(control.length), true);
  }
  return header;
}

/** Sends `data` (at least one byte) and, with it, copies of `descriptors`. */
export function sendMessage(fd: number, data: Uint8Array<ArrayBuffer>, descriptors: number[] = []) {
  if (descriptors.length > MAX_DESCRIPTORS) {
    throw new RangeError(`At most ${MAX_DESCRIPTORS} descriptors fit in one message`);
  }
  const dataLength = descriptors.length * 4;
  const control = new Uint8Array(dataLength === 0 ? 0 : CMSG_HEADER + ((dataLength + 7) & ~7));
  if (dataLength > 0) {
    const view = new DataView(control.buffer);
    view.setBigUint64(0, BigInt(CMSG_HEADER + dataLength), true);
    view.setInt32(8, SOL_SOCKET, true);
    view.setInt32(12, SCM_RIGHTS, true);
    descriptors.forEach((descriptor, i) => view.setInt32(CMSG_HEADER + i * 4, descriptor, true));
  }
  const iovec = new BigUint64Array(2);
  const header = messageHeader(data, control, iovec);
  for (;;) {
    if (libc.sendmsg(fd, header, 0) >= 0) return;
    const code = errno();
    if (code !== Errno.EINTR) throw new SystemError("sendmsg", code);
  }
}

/**
 * Receives one message of at most `maxBytes`, waiting for it. Returns
 * undefined at end of stream: the peer closed its end or exited.
 */
export function receiveMessage(fd: number, maxBytes = 4096): UnixMessage | undefined {
  const data = new Uint8Array(maxBytes);
  const control = new Uint8Array(CMSG_HEADER + MAX_DESCRIPTORS * 4);
  const iovec = new BigUint64Array(2);
  const header = messageHeader(data, control, iovec);
  let length: number;
  for (;;) {
    length = Number(libc.recvmsg(fd, header, MSG_CMSG_CLOEXEC));
    if (length >= 0) break;
    const code = errno();
    if (code !== Errno.EINTR) throw new SystemError("recvmsg", code);
  }
  const view = new DataView(header.buffer);
  const controlLength = Number(view.getBigUint64(40, true));
  const descriptors: number[] = [];
  const controlView = new DataView(control.buffer);
  for (let at = 0; at + CMSG_HEADER <= controlLength;) {
    const cmsgLength = Number(controlView.getBigUint64(at, true));
    if (cmsgLength < CMSG_HEADER) break;
    const level = controlView.getInt32(at + 8, true);
    const type = controlView.getInt32(at + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let i = at + CMSG_HEADER; i + 4 <= at + cmsgLength; i += 4) {
        descriptors.push(controlView.getInt32(i, true));
      }
    }
    at += (cmsgLength + 7) & ~7;
  }
  if (length === 0 && descriptors.length === 0) return undefined;
  return { data: data.slice(0, length), descriptors };
}

const SO_SNDTIMEO = 21;
/** A peer that closed early gets EPIPE instead of SIGPIPE. */
const MSG_NOSIGNAL = 0x4000;
/** sun_path holds 108 bytes, the terminating NUL included. */
const UNIX_PATH_MAX = 108;

/**
 * The address of a Unix socket named `path`; a leading '@' names one in the
 * abstract namespace (sun_path starts with a NUL byte and is not terminated),
 * as systemd writes `$NOTIFY_SOCKET`.
 */
function unixAddress(path: string): { address: Uint8Array<ArrayBuffer>; length: number } {
  const abstract = path.startsWith("@");
  const name = new TextEncoder().encode(abstract ? path.slice(1) : path);
  // Either way one byte more than the name: the leading NUL, or the terminating one.
  const used = name.length + 1;
  if (used > UNIX_PATH_MAX) {
    throw new Error(`Socket path too long (${used} bytes, at most ${UNIX_PATH_MAX}): ${path}`);
  }
  const address = new Uint8Array(2 + UNIX_PATH_MAX);
  address[0] = AF_UNIX;
  // An abstract name is the bytes after the NUL, exactly as long as the address says.
  address.set(name, abstract ? 3 : 2);
  return { address, length: abstract ? 3 + name.length : 2 + name.length + 1 };
}

/**
 * A listening Unix stream socket bound to `path`, non-blocking so that a
 * loop which polls it can accept without ever waiting. The socket file is
 * created with `mode` (less the umask): the mode is set on the socket before
 * bind creates the file, so there is no moment when it is more open, and no
 * chmod by path that a swapped file could redirect.
 */
export function listenUnix(path: string, backlog = 16, mode = 0o600): number {
  const { address, length } = unixAddress(path);
  const fd = check(
    libc.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0),
    "socket(AF_UNIX)",
  );
  try {
    check(libc.fchmod(fd, mode), "fchmod");
    check(libc.bind(fd, address, length), `bind ${path}`);
    check(libc.listen(fd, backlog), `listen ${path}`);
  } catch (error) {
    libc.close(fd);
    throw error;
  }
  return fd;
}

const SO_PEERCRED = 17;

/** Who is at the other end of a connected Unix socket, as the kernel saw it connect. */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/** The peer's credentials (SO_PEERCRED) of a connected Unix socket. */
export function peerCredentials(fd: number): PeerCredentials {
  const ucred = new Int32Array(3); // struct ucred: pid, uid, gid
  const length = new Uint32Array([12]);
  check(
    libc.getsockopt(
      fd,
      SOL_SOCKET,
      SO_PEERCRED,
      new Uint8Array(ucred.buffer),
      new Uint8Array(length.buffer),
    ),
    "getsockopt(SO_PEERCRED)",
  );
  return { pid: ucred[0], uid: ucred[1] >>> 0, gid: ucred[2] >>> 0 };
}

/**
 * Connects to the Unix stream socket at `path` without waiting and returns
 * the non-blocking descriptor. Throws a {@linkcode SystemError}: ECONNREFUSED
 * when nobody listens there (a socket left by a process that died), EAGAIN
 * when the listener's queue is full.
 */
export function connectUnix(path: string): number {
  const { address, length } = unixAddress(path);
  const fd = check(
    libc.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0),
    "socket(AF_UNIX)",
  );
  if (libc.connect(fd, address, length) < 0) {
    const code = errno();
    libc.close(fd);
    throw new SystemError(`connect ${path}`, code);
  }
  return fd;
}

/** What {@linkcode readToEnd} got: the bytes, and why it stopped. */
export interface ReadResult {
  bytes: Uint8Array<ArrayBuffer>;
  ended: "end" | "timeout" | "too long" | "error";
}

/**
 * Reads a non-blocking descriptor to the end of the stream, but no more than
 * `maxBytes` and for no longer than `timeoutMs`, so that a peer that says
 * nothing, or too much, cannot hold the caller. Waits without blocking the
 * event loop.
 */
export async function readToEnd(
  fd: number,
  maxBytes: number,
  timeoutMs: number,
): Promise<ReadResult> {
  const deadline = Date.now() + timeoutMs;
  const poller = new PollSet([fd]);
  let buffer = new Uint8Array(Math.min(maxBytes + 1, 1 << 16));
  let used = 0;
  for (;;) {
    if (used === buffer.length) {
      if (used > maxBytes) return { bytes: buffer.slice(0, maxBytes), ended: "too long" };
      const larger = new Uint8Array(Math.min(maxBytes + 1, buffer.length * 2));
      larger.set(buffer);
      buffer = larger;
    }
    const count = libc.read(
      fd,
      Deno.UnsafePointer.offset(Deno.UnsafePointer.of(buffer)!, used),
      BigInt(buffer.length - used),
    );
    if (count > 0) {
      used += count;
      continue;
    }
    if (count === 0) return { bytes: buffer.slice(0, used), ended: "end" };
    const code = errno();
    if (code === Errno.EINTR) continue;
    // A peer that answered and closed without reading our request resets the connection
    // (Linux reports ECONNRESET once the answer is read): its answer is whole all the same.
    if (code === Errno.ECONNRESET) return { bytes: buffer.slice(0, used), ended: "end" };
    if (code !== Errno.EAGAIN) return { bytes: buffer.slice(0, used), ended: "error" };
    const left = deadline - Date.now();
    if (left <= 0) return { bytes: buffer.slice(0, used), ended: "timeout" };
    await poller.waitAsync(left);
    if (!(poller.events(0) & (POLLIN | POLLHUP | POLLERR)) && Date.now() >= deadline) {
      return { bytes: buffer.slice(0, used), ended: "timeout" };
    }
  }
}

/**
 * Accepts one waiting connection of a listening socket from
 * {@linkcode listenUnix}; -1 when none is waiting. Writes to it give up after
 * `sendTimeoutMs`, so a client that stops reading cannot hold the caller.
 */
export function acceptConnection(listenFd: number, sendTimeoutMs: number): number {
  const fd = libc.accept4(listenFd, null, null, SOCK_CLOEXEC);
  if (fd < 0) return -1;
  const timeout = new BigInt64Array([
    BigInt(Math.floor(sendTimeoutMs / 1000)),
    BigInt((sendTimeoutMs % 1000) * 1000),
  ]);
  libc.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, new Uint8Array(timeout.buffer), 16);
  return fd;
}

/** Writes all of `bytes`; false when the peer went away or the send timeout ran out. */
export function writeAll(fd: number, bytes: Uint8Array<ArrayBuffer>): boolean {
  for (let written = 0; written < bytes.length;) {
    const rest = bytes.subarray(written);
    const count = Number(
      libc.sendto(fd, Deno.UnsafePointer.of(rest), BigInt(rest.length), MSG_NOSIGNAL, null, 0),
    );
    if (count > 0) written += count;
    else if (count < 0 && errno() === Errno.EINTR) continue;
    else return false;
  }
  return true;
}

/** Sends `bytes` as one datagram to the Unix datagram socket at `path` ('@' for abstract). */
export function sendUnixDatagram(path: string, bytes: Uint8Array<ArrayBuffer>): void {
  const { address, length } = unixAddress(path);
  const fd = check(libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket(AF_UNIX)");
  try {
    for (;;) {
      const sent = Number(
        libc.sendto(
          fd,
          Deno.UnsafePointer.of(bytes),
          BigInt(bytes.length),
          MSG_NOSIGNAL,
          Deno.UnsafePointer.of(address),
          length,
        ),
      );
      if (sent >= 0) return;
      const code = errno();
      if (code !== Errno.EINTR) throw new SystemError(`sendto ${path}`, code);
    }
  } finally {
    libc.close(fd);
  }
}

/** struct sockaddr_un: a 2-byte family and a 108-byte path. */
export const SOCKADDR_UN_SIZE = 2 + UNIX_PATH_MAX;

/**
 * A Unix datagram socket bound to `path`, its file created with `mode` (less
 * the umask; set before bind, as in {@linkcode listenUnix}). Throws a
 * {@linkcode SystemError}: EADDRINUSE when the path exists.
 */
export function datagramSocketAt(path: string, mode: number): number {
  const { address, length } = unixAddress(path);
  const fd = check(libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket(AF_UNIX)");
  try {
    check(libc.fchmod(fd, mode), "fchmod");
    check(libc.bind(fd, address, length), `bind ${path}`);
  } catch (error) {
    libc.close(fd);
    throw error;
  }
  return fd;
}

/** The struct sockaddr_un that names `path`. */
export function unixSocketAddress(path: string): Uint8Array<ArrayBuffer> {
  return unixAddress(path).address;
}

/** The path a struct sockaddr_un names. */
export function unixSocketPath(address: Uint8Array): string {
  const name = address.subarray(2, SOCKADDR_UN_SIZE);
  const end = name.indexOf(0);
  return new TextDecoder().decode(end < 0 ? name : name.subarray(0, end));
}

/** Connects a socket to the struct sockaddr_un `address`; throws a {@linkcode SystemError}. */
export function connectTo(fd: number, address: Uint8Array<ArrayBuffer>, what: string): void {
  if (libc.connect(fd, address, address.length) < 0) throw new SystemError(what, errno());
}

/**
 * Waits up to `timeoutMs` for one read from `fd` of at most `maxBytes`:
 * the bytes, or undefined when the peer closed or nothing came in time.
 */
export function readWithin(
  fd: number,
  maxBytes: number,
  timeoutMs: number,
): Uint8Array<ArrayBuffer> | undefined {
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setInt32(0, fd, true);
  entry[4] = 1; // POLLIN
  const deadline = Date.now() + timeoutMs;
  const buffer = new Uint8Array(maxBytes);
  for (;;) {
    const ready = libc.poll(entry, 1n, Math.max(0, deadline - Date.now()));
    if (ready < 0 && errno() === Errno.EINTR) continue;
    if (ready <= 0) return undefined;
    const count = libc.read(fd, Deno.UnsafePointer.of(buffer), BigInt(maxBytes));
    if (count < 0 && (errno() === Errno.EINTR || errno() === Errno.EAGAIN)) continue;
    return count > 0 ? buffer.slice(0, count) : undefined;
  }
}
