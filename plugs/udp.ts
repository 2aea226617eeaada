/**
 * `udp://[LOCAL_ADDRESS:]LOCAL_PORT->REMOTE_ADDRESS:REMOTE_PORT`: a point to
 * point link that carries one Ethernet frame per UDP datagram, with no header.
 *
 * The syntax is that of vdeplug4's udp module (libvdeplug_udp(1)): the plug
 * binds LOCAL_ADDRESS:LOCAL_PORT (the wildcard address when it is left out)
 * and sends every frame to REMOTE_ADDRESS:REMOTE_PORT. Unlike vdeplug4, it
 * takes frames only from REMOTE_ADDRESS:REMOTE_PORT: a datagram from anyone
 * else who can reach the port (another local user, a LAN host) is dropped and
 * counted (`dropUnknownSender`), so it cannot inject into the network on the
 * other side. Quote the VNL in a shell because of `->`.
 *
 * It is also what QEMU's own UDP backends speak, so a QEMU without VDE
 * support joins a Local Area Cloud through vdeno:
 *
 *     vdeno plug vxvde://234.0.0.1 'udp://127.0.0.1:5001->127.0.0.1:5000'
 *     qemu-system-x86_64 ... -netdev dgram,id=net0,local.type=inet,local.host=127.0.0.1,\
 *       local.port=5000,remote.type=inet,remote.host=127.0.0.1,remote.port=5001
 *     (or, with the older backend: -netdev socket,id=net0,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000)
 *
 * Unlike vdeplug4, which asks getaddrinfo, names are looked up in /etc/hosts
 * only (so `localhost` works, DNS names do not); addresses are IPv4, or IPv6
 * with or without brackets.
 *
 * @module
 */

import { closeQuietly } from "../ffi/libc.ts";
import { readTextFile } from "../ffi/os.ts";
import {
  AF_INET,
  AF_INET6,
  bindSocket,
  numericAddress,
  setBufferSize,
  SOCKADDR_SIZE,
  SocketAddress,
  udpSocket,
} from "../ffi/net.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { ETH_HEADER, type FrameBatch, MAX_FRAME } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";
import { VnlError } from "../core/vnl.ts";
import { datagramVectors, sendEach } from "./_datagrams.ts";

const WORDS_PER_NAME = SOCKADDR_SIZE / 4;

/** Socket buffers large enough to ride out a burst while the loop is busy elsewhere. */
const SOCKET_BUFFER = 4 * 1024 * 1024;

/** The two ends of a udp:// link. */
export interface UdpConfig {
  local: SocketAddress;
  remote: SocketAddress;
}

const USAGE_HINT = "expected udp://[LOCAL_ADDRESS:]LOCAL_PORT->REMOTE_ADDRESS:REMOTE_PORT, " +
  "e.g. udp://5001->127.0.0.1:5000";

function port(text: string, what: string): number {
  const value = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(value >= 0 && value <= 65535)) {
    throw new VnlError(`Bad ${what} port in udp:// VNL: ${JSON.stringify(text)}; ${USAGE_HINT}`);
  }
  return value;
}

/**
 * The addresses /etc/hosts gives a name, in file order: enough for
 * `localhost` and local names without a resolver (DNS is not asked).
 */
function hostsFileAddresses(name: string): string[] {
  try {
    return readTextFile("/etc/hosts").split("\n")
      .map((line) => line.replace(/#.*/, "").trim().split(/\s+/))
      .filter((fields) => fields.slice(1).includes(name))
      .map((fields) => fields[0]);
  } catch {
    return [];
  }
}

function address(host: string, portNumber: number, what: string, family?: number) {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  for (const candidate of [bare, ...hostsFileAddresses(bare)]) {
    const parsed = SocketAddress.parse(candidate, portNumber, family);
    if (parsed) return parsed;
  }
  throw new VnlError(
    `Bad ${what} address in udp:// VNL: ${JSON.stringify(host)}; expected a numeric ${
      family === AF_INET ? "IPv4" : family === AF_INET6 ? "IPv6" : "IPv4 or IPv6"
    } address or a name in /etc/hosts (DNS is not asked)`,
  );
}

/** Parses the part of a udp VNL after `udp://`, as vdeplug4 splits it. */
export function parseUdp(rest: string): UdpConfig {
  const arrow = rest.indexOf("->");
  if (arrow < 0) throw new VnlError(`Missing "->" in udp:// VNL; ${USAGE_HINT}`);
  const source = rest.slice(0, arrow), destination = rest.slice(arrow + 2);
  const remoteColon = destination.lastIndexOf(":");
  if (remoteColon < 0) {
    throw new VnlError(`Missing remote port in udp:// VNL; ${USAGE_HINT}`);
  }
  const remote = address(
    destination.slice(0, remoteColon),
    port(destination.slice(remoteColon + 1), "remote"),
    "remote",
  );
  // As in vdeplug4: without a colon the whole source is the port, and an
  // empty host means the wildcard address of the remote's family.
  const localColon = source.lastIndexOf(":");
  const localHost = localColon < 0 ? "" : source.slice(0, localColon);
  const localPort = port(source.slice(localColon + 1), "local");
  const local = localHost === ""
    ? SocketAddress.any(remote.family).withPort(localPort)
    : address(localHost, localPort, "local", remote.family);
  return { local, remote };
}

/** A plug on a UDP point to point link. */
export class UdpPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  readonly config: UdpConfig;
  readonly #fd: number;
  readonly #remoteAddress: number;
  /** The words of the remote's socket address that say who sent a datagram: family, port, IP. */
  readonly #remoteWords: Uint32Array;
  readonly #remoteWordIndexes: readonly number[];
  readonly #vectors = datagramVectors(0);
  #closed = false;

  constructor(vnl: string, rest: string) {
    this.vnl = vnl;
    const config = this.config = parseUdp(rest);
    let fd = -1;
    try {
      fd = udpSocket(config.local.family);
      setBufferSize(fd, "receive", SOCKET_BUFFER);
      setBufferSize(fd, "send", SOCKET_BUFFER);
      bindSocket(fd, config.local);
    } catch (error) {
      closeQuietly(fd);
      throw new Error(`Cannot open ${vnl}: ${(error as Error).message}`);
    }
    this.#fd = fd;
    this.fds = [fd];
    this.#remoteAddress = numericAddress(config.remote.bytes);
    this.#remoteWords = new Uint32Array(config.remote.bytes.slice(0, SOCKADDR_SIZE).buffer);
    // sockaddr_in: family and port, address. sockaddr_in6: family and port, flow info (not
    // compared), address.
    this.#remoteWordIndexes = config.remote.family === AF_INET6 ? [0, 2, 3, 4, 5] : [0, 1];
  }

  #fromRemote(names: Uint32Array, word: number): boolean {
    const remote = this.#remoteWords, indexes = this.#remoteWordIndexes;
    for (let k = 0; k < indexes.length; k++) {
      if (names[word + indexes[k]] !== remote[indexes[k]]) return false;
    }
    return true;
  }

  // Frames go without a header, so datagrams start right at each slot's frame.
  receive(batch: FrameBatch, readyMask: number): boolean {
    const first = batch.count;
    if (!(readyMask & 1) || first >= batch.capacity) return true;
    const vector = this.#vectors.of(batch);
    const received = vector.receiveInto(this.#fd, first, batch.capacity - first, MAX_FRAME + 1);
    if (received <= 0) {
      if (received < 0) this.counters[Counter.dropMalformed]++;
      return true;
    }
    const counters = this.counters;
    const names = vector.nameWords;
    for (let i = first; i < first + received; i++) {
      const length = vector.length(i);
      batch.lengths[i] = 0;
      if (!this.#fromRemote(names, i * WORDS_PER_NAME)) counters[Counter.dropUnknownSender]++;
      else if (length < ETH_HEADER) counters[Counter.dropTooShort]++;
      else if (length > MAX_FRAME || vector.truncated(i)) counters[Counter.dropTooLong]++;
      else {
        batch.lengths[i] = length;
        counters[Counter.framesIn]++;
        counters[Counter.bytesIn] += length;
      }
    }
    batch.count = first + received;
    return true;
  }

  send(batch: FrameBatch): void {
    const vector = this.#vectors.of(batch);
    // A failure is a peer not there yet (ECONNREFUSED after an ICMP error) or
    // a full buffer: that frame is lost, the next ones may pass.
    sendEach(
      this.#fd,
      vector,
      batch,
      this.counters,
      this.#remoteAddress,
      this.config.remote.length,
    );
  }

  describe(): Record<string, unknown> {
    return { local: this.config.local.toString(), remote: this.config.remote.toString() };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#fd);
  }
}
