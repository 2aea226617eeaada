/**
 * `qemu://PATH` or `qemu://ADDRESS:PORT`: a socket that QEMU's stream
 * network backends connect to, so a QEMU without VDE support joins a Local
 * Area Cloud through vdeno.
 *
 * vdeno listens on a Unix socket (`qemu:///run/vm0.sock`, or any address that
 * is not ADDRESS:PORT) or on TCP (`qemu://127.0.0.1:5555`, `qemu://[::1]:5555`,
 * `qemu://:5555` for every address), and QEMU connects as the client:
 *
 *     vdeno plug vxvde://234.0.0.1 qemu://$XDG_RUNTIME_DIR/vm0.sock
 *     qemu-system-x86_64 ... -netdev stream,id=net0,server=off,addr.type=unix,addr.path=$XDG_RUNTIME_DIR/vm0.sock
 *     (TCP: -netdev stream,id=net0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=5555,
 *      or the older -netdev socket,id=net0,connect=127.0.0.1:5555)
 *
 * Start vdeno first: QEMU 7.2 does not retry a refused connection. The wire
 * format is QEMU's: each frame preceded by its length as 4 bytes big-endian.
 *
 * One VM at a time: while one is connected, another connection is closed at
 * once (`refused` in `vdeno status`), so nobody can take the VM's traffic
 * over; when the VM goes away the plug waits for the next instead of ending,
 * so a VM can be restarted without restarting vdeno. On a Unix socket (made
 * mode 0600) only a client of the same user or root is taken (SO_PEERCRED).
 * A path that exists is used only if it is a socket of the same user that
 * nobody listens on (left by a run that was killed): anything else there is
 * an error, never deleted. Frames for the VM while none is connected, or
 * while its socket is full, are dropped (counted), so a stuck VM cannot stall
 * the cloud.
 *
 * @module
 */

import { closeQuietly, Errno, errno, setIovec, SystemError } from "../ffi/libc.ts";
import { duplicateOnto, readInto, writeFrom, writeVector } from "../ffi/io.ts";
import {
  acceptStream,
  AF_INET,
  listenTcp,
  numericAddress,
  setNoDelay,
  SocketAddress,
} from "../ffi/net.ts";
import { fileInfo, removeFile, userId } from "../ffi/os.ts";
import { POLLERR, POLLHUP, POLLRDHUP, PollSet, Wakeup } from "../ffi/poll.ts";
import { connectUnix, listenUnix, peerCredentials } from "../ffi/unix.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { ETH_HEADER, type FrameBatch, HEADROOM, MAX_FRAME, SLOT_SIZE } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";
import { splitQuoted, VnlError } from "../core/vnl.ts";

const SUN_PATH_MAX = 107;
/** QEMU's largest packet (NET_BUFSIZE): a longer length means the stream is out of step. */
const QEMU_MAX_PACKET = 4096 + 65536;
const LENGTH_SIZE = 4;
const INPUT_SIZE = 1 << 18;

/** Where a qemu:// plug listens. */
export type QemuListenAddress =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; address: SocketAddress };

/** Parses the part of a qemu VNL after `qemu://`. */
export function parseQemu(rest: string): QemuListenAddress {
  const [text] = splitQuoted(rest, "");
  if (text === "") {
    throw new VnlError(
      "Missing socket: use qemu://PATH (Unix socket) or qemu://ADDRESS:PORT (TCP), " +
        "e.g. qemu://$XDG_RUNTIME_DIR/vm0.sock",
    );
  }
  const tcp = /^(\[[0-9a-fA-F:.]*\]|[0-9.]*):(\d+)$/.exec(text);
  if (!tcp) {
    if (new TextEncoder().encode(text).length > SUN_PATH_MAX) {
      throw new VnlError(`Socket path too long (over ${SUN_PATH_MAX} bytes): ${text}`);
    }
    return { kind: "unix", path: text };
  }
  const port = Number(tcp[2]);
  if (port < 1 || port > 65535) throw new VnlError(`Bad port in qemu:// VNL: ${tcp[2]}`);
  const host = tcp[1].startsWith("[") ? tcp[1].slice(1, -1) : tcp[1];
  const address = host === ""
    ? SocketAddress.any(AF_INET).withPort(port)
    : SocketAddress.parse(host, port);
  if (!address) throw new VnlError(`Bad address in qemu:// VNL: ${JSON.stringify(tcp[1])}`);
  return { kind: "tcp", address };
}

/** Whether `path` is a socket of this user's (not following a symbolic link). */
function isOwnSocket(path: string): boolean {
  try {
    const info = fileInfo(path, false);
    return info !== undefined && info.isSocket && info.uid === userId();
  } catch {
    return false;
  }
}

/**
 * Makes way for a listening socket at `path`: a socket of this user's that
 * nobody listens on (left by a run that was killed) is removed; anything
 * else that exists there is an error, and is left alone.
 */
function clearUnixPath(path: string): void {
  if (path.startsWith("@")) return; // An abstract name: no file.
  if (fileInfo(path, false) === undefined) return;
  if (!isOwnSocket(path)) {
    throw new Error(
      `${path} exists and is not a socket of this user's; remove it or choose another path`,
    );
  }
  try {
    closeQuietly(connectUnix(path));
  } catch (error) {
    if (error instanceof SystemError && error.code === Errno.ECONNREFUSED) {
      removeFile(path);
      return;
    }
  }
  throw new Error(`${path} is in use by another process`);
}

/** A plug that QEMU's stream backend connects to. */
export class QemuStreamPlug implements Plug {
  readonly vnl: string;
  /** The listening socket, then the VM's connection (or a placeholder that never turns readable). */
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  readonly listenAddress: QemuListenAddress;
  readonly #listenFd: number;
  /**
   * The descriptor number the VM's connection is moved onto with dup2: the
   * cable polls a fixed set of descriptors, so connections come and go
   * behind one number. With no VM it holds a never-woken eventfd.
   */
  readonly #connectionFd: number;
  readonly #idle: Wakeup;
  #connected = false;
  #connections = 0;
  /** Connections closed at once: a second client, or a Unix client of another user. */
  #refused = 0;
  /** Polls the VM's connection for its end, to tell a restarted VM from a second client. */
  readonly #hangUp = new PollSet([-1]);
  readonly #input = new Uint8Array(INPUT_SIZE);
  readonly #inputPointer = Deno.UnsafePointer.of(this.#input)!;
  #inputStart = 0;
  #inputEnd = 0;
  /** Bytes of an oversized frame still to be skipped on input. */
  #skip = 0;
  /** The rest of a frame the socket took only part of: it goes out before anything else. */
  readonly #pending = new Uint8Array(LENGTH_SIZE + MAX_FRAME);
  #pendingStart = 0;
  #pendingEnd = 0;
  #iovecs = new Uint8Array(0);
  #iovecWords = new Uint32Array(0);
  /** The batch slot of each iovec of the last send. */
  #iovecSlots = new Int32Array(0);
  #closed = false;

  constructor(vnl: string, rest: string) {
    this.vnl = vnl;
    const listenAddress = this.listenAddress = parseQemu(rest);
    let listenFd = -1;
    const idle = this.#idle = new Wakeup();
    const placeholder = new Wakeup();
    try {
      if (listenAddress.kind === "unix") {
        clearUnixPath(listenAddress.path);
        listenFd = listenUnix(listenAddress.path, 4, 0o600);
      } else {
        listenFd = listenTcp(listenAddress.address, 4);
      }
    } catch (error) {
      closeQuietly(listenFd);
      idle.close();
      placeholder.close();
      throw new Error(`Cannot open ${vnl}: ${(error as Error).message}`);
    }
    this.#listenFd = listenFd;
    this.#connectionFd = placeholder.fd;
    this.fds = [listenFd, placeholder.fd];
    this.outputFd = placeholder.fd;
    this.#hangUp.setEntry(0, placeholder.fd, POLLRDHUP);
  }

  /** The VM's connection, which a send that did not fit waits on. */
  readonly outputFd: number;

  /** Part of a frame waits for the VM's socket to take it. */
  get pendingOutput(): boolean {
    return this.#pendingStart < this.#pendingEnd;
  }

  /** Writes what waits of a partly sent frame, as far as the socket takes it. */
  flush(): void {
    this.#flushPending();
  }

  /** Input read but not yet delivered because the batch was full. */
  get backlog(): boolean {
    return this.#connected && this.#wholeFrameBuffered();
  }

  #wholeFrameBuffered(): boolean {
    const available = this.#inputEnd - this.#inputStart;
    if (this.#skip > 0) return available > 0;
    if (available < LENGTH_SIZE) return false;
    return available >= LENGTH_SIZE + this.#announcedLength();
  }

  #announcedLength(): number {
    const input = this.#input, at = this.#inputStart;
    return ((input[at] << 24) | (input[at + 1] << 16) | (input[at + 2] << 8) | input[at + 3]) >>>
      0;
  }

  /** Whether the VM's connection has ended (the VM went away), though not read to its end yet. */
  #connectionEnded(): boolean {
    this.#hangUp.wait(0);
    return (this.#hangUp.events(0) & (POLLRDHUP | POLLHUP | POLLERR)) !== 0;
  }

  #accept(): void {
    const fd = acceptStream(this.#listenFd);
    if (fd < 0) return; // The client gave up already, or a signal: nothing to do.
    if (this.#connected && this.#connectionEnded()) this.#disconnect();
    if (this.#connected || !this.#mayConnect(fd)) {
      closeQuietly(fd);
      this.#refused++;
      return;
    }
    if (this.listenAddress.kind === "tcp") setNoDelay(fd);
    duplicateOnto(fd, this.#connectionFd);
    closeQuietly(fd);
    this.#reset();
    this.#connected = true;
    this.#connections++;
  }

  /** On a Unix socket, only the same user or root. */
  #mayConnect(fd: number): boolean {
    if (this.listenAddress.kind !== "unix") return true;
    try {
      const { uid } = peerCredentials(fd);
      return uid === 0 || uid === userId();
    } catch {
      return false;
    }
  }

  #disconnect(): void {
    duplicateOnto(this.#idle.fd, this.#connectionFd);
    this.#connected = false;
    this.#reset();
  }

  #reset(): void {
    this.#inputStart = this.#inputEnd = this.#skip = 0;
    this.#pendingStart = this.#pendingEnd = 0;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    // After an accept, bit 1 still speaks of the old connection: the read
    // below is non-blocking, so a wrong guess costs one EAGAIN.
    if (readyMask & 1) this.#accept();
    if (!this.#connected) return true;
    if (this.#wholeFrameBuffered()) return this.#deliver(batch);
    if (!(readyMask & 2)) return true;
    if (this.#inputStart > 0) {
      this.#input.copyWithin(0, this.#inputStart, this.#inputEnd);
      this.#inputEnd -= this.#inputStart;
      this.#inputStart = 0;
    }
    const room = INPUT_SIZE - this.#inputEnd;
    const length = Number(
      readInto(
        this.#connectionFd,
        Deno.UnsafePointer.offset(this.#inputPointer, this.#inputEnd),
        BigInt(room),
      ),
    );
    if (length === 0) {
      this.#disconnect();
      return true;
    }
    if (length < 0) {
      const code = errno();
      if (code !== Errno.EAGAIN && code !== Errno.EINTR) this.#disconnect();
      return true;
    }
    this.#inputEnd += length;
    return this.#deliver(batch);
  }

  #deliver(batch: FrameBatch): boolean {
    const input = this.#input;
    const counters = this.counters;
    while (batch.count < batch.capacity) {
      const available = this.#inputEnd - this.#inputStart;
      if (this.#skip > 0) {
        const take = Math.min(this.#skip, available);
        this.#inputStart += take;
        this.#skip -= take;
        if (this.#skip > 0) break;
        continue;
      }
      if (available < LENGTH_SIZE) break;
      const length = this.#announcedLength();
      if (length > QEMU_MAX_PACKET) {
        // Not QEMU's framing: nothing after this can be trusted.
        counters[Counter.dropMalformed]++;
        this.#disconnect();
        break;
      }
      if (length > MAX_FRAME) {
        counters[Counter.dropTooLong]++;
        this.#inputStart += LENGTH_SIZE;
        this.#skip = length;
        continue;
      }
      if (available < LENGTH_SIZE + length) break;
      const start = this.#inputStart + LENGTH_SIZE;
      this.#inputStart = start + length;
      if (length < ETH_HEADER) {
        counters[Counter.dropTooShort]++;
        continue;
      }
      const i = batch.count++;
      batch.bytes.set(input.subarray(start, start + length), batch.offset(i));
      batch.lengths[i] = length;
      counters[Counter.framesIn]++;
      counters[Counter.bytesIn] += length;
    }
    if (this.#inputStart === this.#inputEnd) this.#inputStart = this.#inputEnd = 0;
    return true;
  }

  /** Writes what is left of a partly sent frame; returns true when nothing is left. */
  #flushPending(): boolean {
    while (this.#pendingStart < this.#pendingEnd) {
      const written = Number(
        writeFrom(
          this.#connectionFd,
          Deno.UnsafePointer.offset(Deno.UnsafePointer.of(this.#pending)!, this.#pendingStart),
          BigInt(this.#pendingEnd - this.#pendingStart),
        ),
      );
      if (written < 0) {
        const code = errno();
        if (code === Errno.EINTR) continue;
        if (code !== Errno.EAGAIN) this.#disconnect();
        return false;
      }
      this.#pendingStart += written;
    }
    this.#pendingStart = this.#pendingEnd = 0;
    return true;
  }

  send(batch: FrameBatch): void {
    const counters = this.counters;
    let frames = 0;
    for (let i = 0; i < batch.count; i++) if (batch.lengths[i] > 0) frames++;
    if (frames === 0) return;
    if (!this.#connected || !this.#flushPending()) {
      counters[Counter.dropQueueFull] += frames;
      return;
    }
    if (this.#iovecs.length < batch.capacity * 16) {
      this.#iovecs = new Uint8Array(batch.capacity * 16);
      this.#iovecWords = new Uint32Array(this.#iovecs.buffer);
      this.#iovecSlots = new Int32Array(batch.capacity);
    }
    const words = this.#iovecWords;
    const slots = this.#iovecSlots;
    const base = numericAddress(batch.bytes);
    let count = 0;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      const start = i * SLOT_SIZE + HEADROOM - LENGTH_SIZE;
      batch.bytes[start] = length >>> 24;
      batch.bytes[start + 1] = (length >> 16) & 0xff;
      batch.bytes[start + 2] = (length >> 8) & 0xff;
      batch.bytes[start + 3] = length & 0xff;
      setIovec(words, count, base + start, length + LENGTH_SIZE);
      slots[count++] = i;
    }
    let written: number;
    do {
      written = Number(writeVector(this.#connectionFd, Deno.UnsafePointer.of(this.#iovecs), count));
    } while (written < 0 && errno() === Errno.EINTR);
    if (written < 0) {
      if (errno() !== Errno.EAGAIN) this.#disconnect();
      counters[Counter.dropQueueFull] += count;
      return;
    }
    for (let n = 0; n < count; n++) {
      const size = words[n * 4 + 2];
      const length = size - LENGTH_SIZE;
      if (written >= size) {
        written -= size;
      } else if (written > 0) {
        // Part of this frame went out: the rest must follow, or the stream is out of step.
        const start = slots[n] * SLOT_SIZE + HEADROOM - LENGTH_SIZE + written;
        const rest = size - written;
        this.#pending.set(batch.bytes.subarray(start, start + rest), 0);
        this.#pendingStart = 0;
        this.#pendingEnd = rest;
        written = 0;
      } else {
        counters[Counter.dropQueueFull]++;
        continue;
      }
      counters[Counter.framesOut]++;
      counters[Counter.bytesOut] += length;
    }
  }

  describe(): Record<string, unknown> {
    const where = this.listenAddress;
    return {
      listening: where.kind === "unix" ? where.path : where.address.toString(),
      vmConnected: this.#connected,
      connections: this.#connections,
      refused: this.#refused,
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#connectionFd);
    closeQuietly(this.#listenFd);
    this.#idle.close();
    if (this.listenAddress.kind === "unix" && isOwnSocket(this.listenAddress.path)) {
      try {
        removeFile(this.listenAddress.path);
      } catch {
        // Already gone.
      }
    }
  }
}
