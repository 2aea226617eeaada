/**
 * UDP sockets through libc: addresses, options, multicast membership and
 * batched datagram I/O with recvmmsg/sendmmsg.
 *
 * Deno's own datagram API loses most datagrams above ~40k/s (one promise per
 * datagram); these synchronous calls keep up with C.
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
} from "./abi.ts";
export { AF_INET, AF_INET6 } from "./abi.ts";
import {
  addressOf,
  check,
  closeQuietly,
  cString,
  Errno,
  errno,
  libc,
  setAddress,
  setIovec,
  SystemError,
} from "./libc.ts";
import { interfaceAddresses } from "./os.ts";

const IPPROTO_UDP = 17;
const SO_REUSEADDR = 2;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const IPPROTO_IP = 0;
const IP_TTL = 2;
const IP_MULTICAST_IF = 32;
const IP_MULTICAST_TTL = 33;
const IP_MULTICAST_LOOP = 34;
const IP_ADD_MEMBERSHIP = 35;
const IP_MTU = 14;
const IPPROTO_IPV6 = 41;
const IPV6_UNICAST_HOPS = 16;
const IPV6_MULTICAST_IF = 17;
const IPV6_MULTICAST_HOPS = 18;
const IPV6_MULTICAST_LOOP = 19;
const IPV6_JOIN_GROUP = 20;
const IPV6_MTU = 24;
const IPV6_V6ONLY = 26;
export const MSG_DONTWAIT = 0x40;

/** Bytes reserved for one socket address (sockaddr_in6 is 28). */
export const SOCKADDR_SIZE = 32;

/** An IPv4 or IPv6 address with a UDP port, laid out as a C sockaddr. */
export class SocketAddress {
  /** The sockaddr_in or sockaddr_in6 bytes. */
  readonly bytes: Uint8Array<ArrayBuffer>;

  constructor(bytes: Uint8Array<ArrayBuffer>) {
    this.bytes = bytes;
  }

  /** Parses a numeric IPv4 or IPv6 address; `family` restricts it to one of them. */
  static parse(host: string, port: number, family?: number): SocketAddress | undefined {
    const raw = new Uint8Array(16);
    const bytes = new Uint8Array(SOCKADDR_SIZE);
    const view = new DataView(bytes.buffer);
    const scopeAt = host.indexOf("%");
    const bare = scopeAt >= 0 ? host.slice(0, scopeAt) : host;
    if (family !== AF_INET6 && libc.inet_pton(AF_INET, cString(bare), raw) === 1) {
      view.setUint16(0, AF_INET, true);
      view.setUint16(2, port);
      bytes.set(raw.subarray(0, 4), 4);
      return new SocketAddress(bytes);
    }
    if (family !== AF_INET && libc.inet_pton(AF_INET6, cString(bare), raw) === 1) {
      view.setUint16(0, AF_INET6, true);
      view.setUint16(2, port);
      bytes.set(raw, 8);
      if (scopeAt >= 0) {
        const scope = host.slice(scopeAt + 1);
        const index = /^\d+$/.test(scope) ? Number(scope) : interfaceIndex(scope);
        view.setUint32(24, index, true);
      }
      return new SocketAddress(bytes);
    }
    return undefined;
  }

  /** The wildcard address of a family, port 0. */
  static any(family: number): SocketAddress {
    const bytes = new Uint8Array(SOCKADDR_SIZE);
    new DataView(bytes.buffer).setUint16(0, family, true);
    return new SocketAddress(bytes);
  }

  get family(): number {
    return this.bytes[0] | (this.bytes[1] << 8);
  }

  get port(): number {
    return (this.bytes[2] << 8) | this.bytes[3];
  }

  /** The length C expects for this address. */
  get length(): number {
    return this.family === AF_INET ? 16 : 28;
  }

  /** The IP address bytes: 4 or 16 of them. */
  get ip(): Uint8Array<ArrayBuffer> {
    return this.family === AF_INET ? this.bytes.subarray(4, 8) : this.bytes.subarray(8, 24);
  }

  /** A copy with another port. */
  withPort(port: number): SocketAddress {
    const copy = new SocketAddress(this.bytes.slice());
    new DataView(copy.bytes.buffer).setUint16(2, port);
    return copy;
  }

  toString(): string {
    return formatSocketAddress(this.bytes, 0);
  }
}

/** Formats the sockaddr at `offset` of `bytes` as `ip:port` or `[ip6]:port`. */
export function formatSocketAddress(bytes: Uint8Array, offset: number): string {
  const family = bytes[offset] | (bytes[offset + 1] << 8);
  const port = (bytes[offset + 2] << 8) | bytes[offset + 3];
  if (family === AF_INET) {
    return `${bytes.subarray(offset + 4, offset + 8).join(".")}:${port}`;
  }
  if (family === AF_INET6) {
    return `[${formatIPv6(bytes.subarray(offset + 8, offset + 24))}]:${port}`;
  }
  return "?";
}

/** The conventional text form of 16 IPv6 address bytes. */
export function formatIPv6(ip: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((ip[i] << 8) | ip[i + 1]);
  let bestStart = -1, bestLength = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength && j - i > 1) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestStart < 0) return hex.join(":");
  const head = hex.slice(0, bestStart).join(":");
  const tail = hex.slice(bestStart + bestLength).join(":");
  return `${head}::${tail}`;
}

/** The index of a network interface, or throws naming it. */
export function interfaceIndex(name: string): number {
  const index = libc.if_nametoindex(cString(name));
  if (index === 0) throw new Error(`No network interface named ${name}`);
  return index;
}

function int32(value: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, true);
  return bytes;
}

function setOption(
  fd: number,
  level: number,
  name: number,
  value: Uint8Array<ArrayBuffer>,
  what: string,
) {
  check(libc.setsockopt(fd, level, name, value, value.length), what);
}

/** A UDP socket of `family`, close-on-exec. */
export function udpSocket(family: number): number {
  return check(libc.socket(family, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP), "socket");
}

export function bindSocket(fd: number, address: SocketAddress): void {
  if (libc.bind(fd, address.bytes, address.length) < 0) {
    throw new SystemError(`Cannot bind ${address}`, errno());
  }
}

/** The local address a socket is bound to. */
export function localAddress(fd: number): SocketAddress {
  const bytes = new Uint8Array(SOCKADDR_SIZE);
  const length = int32(SOCKADDR_SIZE);
  check(libc.getsockname(fd, bytes, length), "getsockname");
  return new SocketAddress(bytes);
}

export function setReuseAddress(fd: number): void {
  setOption(fd, SOL_SOCKET, SO_REUSEADDR, int32(1), "SO_REUSEADDR");
}

/** A listening TCP socket on `address`, non-blocking, with SO_REUSEADDR. */
export function listenTcp(address: SocketAddress, backlog: number): number {
  const fd = check(
    libc.socket(address.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
    "socket",
  );
  try {
    setReuseAddress(fd);
    check(libc.bind(fd, address.bytes, address.length), `Cannot bind ${address}`);
    check(libc.listen(fd, backlog), "listen");
  } catch (error) {
    libc.close(fd);
    throw error;
  }
  return fd;
}

/** Accepts a waiting connection of a listening socket, non-blocking; -1 when none waits. */
export function acceptStream(listenFd: number): number {
  return libc.accept4(listenFd, null, null, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

/** Sends small TCP segments at once (TCP_NODELAY): a frame must not wait for the next. */
export function setNoDelay(fd: number): void {
  const IPPROTO_TCP = 6, TCP_NODELAY = 1;
  libc.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, int32(1), 4);
}

/**
 * Sets a socket buffer size. As root the FORCE variant lifts the sysctl cap,
 * so large buffers work without tuning net.core.rmem_max.
 */
export function setBufferSize(fd: number, which: "receive" | "send", bytes: number): void {
  const [plain, force] = which === "receive"
    ? [SO_RCVBUF, SO_RCVBUFFORCE]
    : [SO_SNDBUF, SO_SNDBUFFORCE];
  const value = int32(Math.min(bytes, 0x7fffffff));
  if (libc.setsockopt(fd, SOL_SOCKET, force, value, 4) === 0) return;
  setOption(fd, SOL_SOCKET, plain, value, which === "receive" ? "SO_RCVBUF" : "SO_SNDBUF");
}

/** The unicast and multicast hop limit of outgoing datagrams. */
export function setTtl(fd: number, family: number, ttl: number): void {
  if (family === AF_INET) {
    setOption(fd, IPPROTO_IP, IP_TTL, int32(ttl), "IP_TTL");
    setOption(fd, IPPROTO_IP, IP_MULTICAST_TTL, int32(ttl), "IP_MULTICAST_TTL");
  } else {
    setOption(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, int32(ttl), "IPV6_UNICAST_HOPS");
    setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, int32(ttl), "IPV6_MULTICAST_HOPS");
  }
}

/** The hop limit of outgoing multicast datagrams only; unicast keeps the system's default. */
export function setMulticastTtl(fd: number, family: number, ttl: number): void {
  if (family === AF_INET) {
    setOption(fd, IPPROTO_IP, IP_MULTICAST_TTL, int32(ttl), "IP_MULTICAST_TTL");
  } else {
    setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, int32(ttl), "IPV6_MULTICAST_HOPS");
  }
}

/** Whether this host's own members of a group receive the socket's multicast datagrams. */
export function setMulticastLoop(fd: number, family: number, on: boolean): void {
  if (family === AF_INET) {
    setOption(fd, IPPROTO_IP, IP_MULTICAST_LOOP, int32(on ? 1 : 0), "IP_MULTICAST_LOOP");
  } else {
    setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, int32(on ? 1 : 0), "IPV6_MULTICAST_LOOP");
  }
}

/** Keeps an IPv6 socket to IPv6 alone, so that it does not also take the port for IPv4. */
export function setIPv6Only(fd: number): void {
  setOption(fd, IPPROTO_IPV6, IPV6_V6ONLY, int32(1), "IPV6_V6ONLY");
}

const NO_MULTICAST_ROUTE =
  "no interface to join it on; add a route (ip route add 224.0.0.0/4 dev IFACE, or ff00::/8 for IPv6) or name one with if=IFACE";

/** Joins a multicast group on the interface `ifindex` (0: the kernel's choice). */
export function joinGroup(fd: number, group: SocketAddress, ifindex: number): void {
  try {
    joinGroupOn(fd, group, ifindex);
  } catch (error) {
    if (error instanceof SystemError && error.code === 19 /* ENODEV */) {
      throw new Error(`Cannot join group ${group}: ${NO_MULTICAST_ROUTE}`);
    }
    throw error;
  }
}

function joinGroupOn(fd: number, group: SocketAddress, ifindex: number): void {
  if (group.family === AF_INET) {
    const request = new Uint8Array(12); // struct ip_mreqn
    request.set(group.ip, 0);
    new DataView(request.buffer).setInt32(8, ifindex, true);
    setOption(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, request, `Cannot join group ${group}`);
  } else {
    const request = new Uint8Array(20); // struct ipv6_mreq
    request.set(group.ip, 0);
    new DataView(request.buffer).setUint32(16, ifindex, true);
    setOption(fd, IPPROTO_IPV6, IPV6_JOIN_GROUP, request, `Cannot join group ${group}`);
  }
}

/** Sends multicast datagrams out of the interface `ifindex`. */
export function setMulticastInterface(fd: number, family: number, ifindex: number): void {
  if (family === AF_INET) {
    const request = new Uint8Array(12); // struct ip_mreqn, only the index set
    new DataView(request.buffer).setInt32(8, ifindex, true);
    setOption(fd, IPPROTO_IP, IP_MULTICAST_IF, request, "IP_MULTICAST_IF");
  } else {
    setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, int32(ifindex), "IPV6_MULTICAST_IF");
  }
}

/**
 * The MTU of the route to `destination`, leaving by interface `ifindex` when
 * not 0 (as a multicast socket would), or undefined when there is no route.
 */
export function routeMtu(destination: SocketAddress, ifindex: number): number | undefined {
  const family = destination.family;
  const fd = udpSocket(family);
  try {
    if (ifindex > 0) setMulticastInterface(fd, family, ifindex);
    if (libc.connect(fd, destination.bytes, destination.length) < 0) return undefined;
    const value = new Uint8Array(4);
    const length = int32(4);
    const [level, name] = family === AF_INET ? [IPPROTO_IP, IP_MTU] : [IPPROTO_IPV6, IPV6_MTU];
    if (libc.getsockopt(fd, level, name, value, length) < 0) return undefined;
    return new DataView(value.buffer).getInt32(0, true);
  } finally {
    closeQuietly(fd);
  }
}

/**
 * The local address this host sends from to reach `destination` (port 0), or
 * undefined when there is no route to it.
 */
export function routeSource(destination: SocketAddress): SocketAddress | undefined {
  const fd = udpSocket(destination.family);
  try {
    if (libc.connect(fd, destination.bytes, destination.length) < 0) return undefined;
    return localAddress(fd).withPort(0);
  } finally {
    closeQuietly(fd);
  }
}

/**
 * The addresses of `family` that a host name stands for (getaddrinfo: the
 * hosts file, then DNS), each with `port`; empty when it stands for none.
 */
export function resolveHost(name: string, port: number, family: number): SocketAddress[] {
  const ADDRINFO_SIZE = 48, FAMILY_AT = 4, SOCKTYPE_AT = 8, ADDRLEN_AT = 16, ADDR_AT = 24;
  const NEXT_AT = 40;
  const hints = new Uint8Array(ADDRINFO_SIZE);
  const view = new DataView(hints.buffer);
  view.setInt32(FAMILY_AT, family, true);
  view.setInt32(SOCKTYPE_AT, SOCK_DGRAM, true);
  const result = new BigUint64Array(1);
  const resultBytes = new Uint8Array(result.buffer);
  if (libc.getaddrinfo(cString(name), null, hints, resultBytes) !== 0) return [];
  const first = Deno.UnsafePointer.create(result[0]);
  const found: SocketAddress[] = [];
  try {
    for (let entry = first; entry !== null;) {
      const info = new Deno.UnsafePointerView(entry);
      const length = info.getUint32(ADDRLEN_AT);
      const address = info.getPointer(ADDR_AT);
      if (info.getInt32(FAMILY_AT) === family && address !== null && length <= SOCKADDR_SIZE) {
        const bytes = new Uint8Array(SOCKADDR_SIZE);
        Deno.UnsafePointerView.copyInto(address, bytes.subarray(0, length));
        const socketAddress = new SocketAddress(bytes).withPort(port);
        if (!found.some((known) => known.toString() === socketAddress.toString())) {
          found.push(socketAddress);
        }
      }
      entry = info.getPointer(NEXT_AT);
    }
  } finally {
    if (first !== null) libc.freeaddrinfo(first);
  }
  return found;
}

/** Sends one datagram; returns the bytes sent or -errno. */
export function sendTo(
  fd: number,
  data: Uint8Array<ArrayBuffer>,
  length: number,
  to: SocketAddress,
): number {
  const sent = Number(
    libc.sendto(
      fd,
      Deno.UnsafePointer.of(data),
      BigInt(length),
      0,
      Deno.UnsafePointer.of(to.bytes),
      to.length,
    ),
  );
  return sent < 0 ? -errno() : sent;
}

/** The addresses of this host's interfaces, as `family:bytes` keys. */
export function localAddressKeys(): Set<string> {
  const keys = new Set<string>();
  for (const entry of interfaceAddresses()) keys.add(`${entry.family}:${entry.ip.join(",")}`);
  return keys;
}

const MMSGHDR_SIZE = 64; // struct mmsghdr on 64-bit Linux: msghdr (56) + msg_len, padded
const IOVEC_SIZE = 16;
/** One UDP_SEGMENT control message: CMSG_SPACE(2), a cmsghdr and a 16-bit segment size. */
const SEGMENT_CONTROL_SIZE = 24;
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
const UDP_GRO = 104;
/** The most a UDP GRO run holds: 64 KB of datagrams and their headers. */
const GRO_BUFFER = 65536 + 4096;

/** Asks the kernel to hand runs of datagrams from one sender over as one buffer (UDP_GRO); false if refused. */
export function enableReceiveRuns(fd: number): boolean {
  return libc.setsockopt(fd, SOL_UDP, UDP_GRO, int32(1), 4) === 0;
}
/** The kernel's limit on the datagrams of one UDP GSO message (UDP_MAX_SEGMENTS was 64 before 5.x). */
export const MAX_SEGMENTS = 64;

/**
 * A vector of datagrams for recvmmsg/sendmmsg whose payloads live in the
 * slots of one caller-owned buffer, so no datagram is copied or allocated.
 *
 * Slot i spans `slotSize` bytes from `i * slotSize`; each datagram starts at
 * `payloadOffset` inside its slot.
 *
 * Sending, one entry may carry a run of datagrams to one destination as a
 * single UDP GSO message (UDP_SEGMENT): the kernel then takes the run through
 * its stack as one packet and cuts it into the same datagrams only at the
 * end (the NIC, or the receiving socket), so peers see ordinary datagrams.
 */
export class DatagramVector {
  readonly capacity: number;
  readonly #headers: Uint8Array<ArrayBuffer>;
  readonly #headerWords: Uint32Array;
  readonly #iovecs: Uint8Array<ArrayBuffer>;
  readonly #iovecWords: Uint32Array;
  /** Sender addresses of received datagrams, SOCKADDR_SIZE bytes each. */
  readonly names: Uint8Array<ArrayBuffer>;
  /** The same addresses as 32-bit words, for fast comparison and copying. */
  readonly nameWords: Uint32Array;
  readonly #namesAddress: number;
  readonly #payloadAddress: number;
  /** The address of `slots`' first byte: split datagrams' rests are found from it. */
  readonly #slotsAddress: number;
  /**
   * Per datagram aimed for a send, its iovecs [start, end): they follow the
   * receive iovecs (one per entry) in the same array, one iovec for a
   * datagram whole in its slot, two for a split one.
   */
  readonly #iovecStart: Int32Array;
  readonly #iovecEnd: Int32Array;
  readonly #slotSize: number;
  readonly #slots: Uint8Array<ArrayBuffer>;
  readonly #payloadOffset: number;
  readonly #headersPointer: Deno.PointerValue;
  readonly #iovecsAddress: number;
  /** Per entry, a UDP_SEGMENT control message, as 32-bit words. */
  readonly #controlWords: Uint32Array;
  readonly #controlsAddress: number;
  /** Per prepared entry, how many datagrams it carries, and the first of them. */
  readonly #datagrams: Int32Array;
  readonly #firstDatagram: Int32Array;
  /** Per aimed datagram, its slot: the datagrams of one slot carry one frame. */
  readonly #slotOf: Int32Array;
  /** Set when the kernel refused a UDP GSO message (EIO, EINVAL): send datagrams one by one. */
  segmentationRefused = false;
  /**
   * Entries from here on are aimed at their own slots, ready to receive up to
   * #aimedLength bytes; a receive with another length (the first one, too)
   * aims them all again.
   */
  #staleBelow = 0;
  #aimedLength = 0;
  /** Runs received with UDP_GRO and what of them is not yet handed out, made on first use. */
  #runs?: ReceivedRuns;
  readonly #runsAt: number;
  /** Runs of more than one datagram that {@linkcode receiveRunInto} received. */
  runsReceived = 0;

  /**
   * `runsAt`, when given, is where in `slots` {@linkcode RECEIVED_RUNS_SIZE}
   * bytes are free for the runs {@linkcode receiveRunInto} takes: they are
   * then copied into the slots with `copyWithin`, which makes no view per
   * datagram. Without it the runs get a buffer of their own.
   */
  constructor(
    slots: Uint8Array<ArrayBuffer>,
    slotSize: number,
    payloadOffset: number,
    capacity: number,
    runsAt = -1,
  ) {
    this.capacity = capacity;
    this.#runsAt = runsAt;
    this.#slotSize = slotSize;
    this.#slots = slots;
    this.#payloadOffset = payloadOffset;
    this.#headers = new Uint8Array(capacity * MMSGHDR_SIZE);
    this.#headerWords = new Uint32Array(this.#headers.buffer);
    this.#iovecs = new Uint8Array(capacity * 3 * IOVEC_SIZE);
    this.#iovecStart = new Int32Array(capacity);
    this.#iovecEnd = new Int32Array(capacity);
    this.#iovecWords = new Uint32Array(this.#iovecs.buffer);
    this.names = new Uint8Array(capacity * SOCKADDR_SIZE);
    this.nameWords = new Uint32Array(this.names.buffer);
    this.#namesAddress = Number(addressOf(this.names));
    this.#slotsAddress = Number(addressOf(slots));
    this.#payloadAddress = this.#slotsAddress + payloadOffset;
    this.#headersPointer = Deno.UnsafePointer.of(this.#headers);
    this.#iovecsAddress = Number(addressOf(this.#iovecs));
    const controls = new Uint8Array(capacity * SEGMENT_CONTROL_SIZE);
    this.#controlWords = new Uint32Array(controls.buffer);
    this.#controlsAddress = Number(addressOf(controls));
    this.#datagrams = new Int32Array(capacity);
    this.#firstDatagram = new Int32Array(capacity);
    this.#slotOf = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) {
      setIovec(this.#iovecWords, i, this.#payloadAddress + i * slotSize, 0);
      this.#aimIovec(this.#headerWords, i, i, 1);
      const control = i * (SEGMENT_CONTROL_SIZE / 4);
      this.#controlWords[control] = 16 + 2; // cmsg_len: CMSG_LEN(2)
      this.#controlWords[control + 2] = SOL_UDP;
      this.#controlWords[control + 3] = UDP_SEGMENT;
    }
  }

  /** Points entry i's msg_iov at `count` iovecs from `first`, with no control message. */
  #aimIovec(words: Uint32Array, i: number, first: number, count: number): void {
    const word = (i * MMSGHDR_SIZE) / 4;
    setAddress(words, word + 4, this.#iovecsAddress + first * IOVEC_SIZE); // msg_iov
    words[word + 6] = count; // msg_iovlen
    words[word + 7] = 0;
    words[word + 8] = 0; // msg_control
    words[word + 9] = 0;
    words[word + 10] = 0; // msg_controllen
    words[word + 11] = 0;
  }

  /**
   * Receives up to `count` datagrams without blocking into slots from `first`
   * on, each at most `maxLength` bytes. Returns how many arrived (0 when
   * none) or -errno.
   */
  receiveInto(fd: number, first: number, count: number, maxLength: number): number {
    const end = first + count;
    // Only entries a send re-aimed, or a receive filled, need setting again: on a
    // quiet network that is one entry per wake-up instead of the whole vector.
    const words = this.#headerWords;
    if (maxLength !== this.#aimedLength) {
      this.#staleBelow = this.capacity;
      this.#aimedLength = maxLength;
    }
    const stale = Math.min(end, this.#staleBelow);
    for (let i = first; i < stale; i++) this.#aim(words, i, maxLength);
    if (this.#staleBelow <= end) this.#staleBelow = Math.min(this.#staleBelow, first);
    const pointer = first === 0
      ? this.#headersPointer
      : Deno.UnsafePointer.offset(this.#headersPointer!, first * MMSGHDR_SIZE);
    const received = libc.recvmmsg(fd, pointer, count, MSG_DONTWAIT, null);
    if (received < 0) {
      const code = errno();
      return code === Errno.EAGAIN ? 0 : -code;
    }
    // The kernel wrote each received entry's name length and flags.
    this.#staleBelow = Math.max(this.#staleBelow, first + received);
    return received;
  }

  /**
   * As {@linkcode receiveInto}, for a socket with UDP_GRO (see
   * {@linkcode enableReceiveRuns}): one recvmmsg takes up to
   * {@linkcode RUNS_PER_RECEIVE} runs, each of datagrams from one sender,
   * which are copied apart into the slots from `first` with their sender's
   * address; what does not fit waits for the next call
   * ({@linkcode runPending}). A `taker` is offered each run of more than one
   * first, where it arrived: the datagrams it takes whole become one slot,
   * marked {@linkcode takenWhole}. Returns how many slots it filled (0 when
   * none) or -errno; `runsReceived` counts the runs of more than one.
   */
  receiveRunInto(
    fd: number,
    first: number,
    count: number,
    maxLength: number,
    taker?: RunTaker,
  ): number {
    const runs = this.#runs ??= this.#runsAt >= 0
      ? new ReceivedRuns(this.#slots, this.#runsAt)
      : new ReceivedRuns(new Uint8Array(RECEIVED_RUNS_SIZE), 0);
    const words = this.#headerWords;
    const slots = this.#slots;
    const end = first + count;
    let i = first;
    runs.tookWhole = false;
    /** Set when a receive found the socket's queue emptied: another would find nothing. */
    let drained = false;
    while (i < end) {
      if (!runs.pending) {
        // What the taker took stays where it arrived until the batch is sent: no receive over it.
        if (runs.tookWhole || drained) break;
        const received = runs.receive(fd);
        if (received <= 0) {
          if (received === 0 || i > first) break;
          return received;
        }
        drained = received < RUNS_PER_RECEIVE;
        this.runsReceived += runs.runsOfMany;
      }
      const handedOut = runs.handOut(
        slots,
        words,
        this.nameWords,
        this.#payloadOffset,
        this.#slotSize,
        i,
        end,
        maxLength,
        taker,
      );
      if (handedOut === i) break; // the next run waits for a batch it fits
      i = handedOut;
    }
    this.#staleBelow = Math.max(this.#staleBelow, i);
    return i - first;
  }

  /** Forgets datagrams of received runs not yet handed out. */
  discardRuns(): void {
    this.#runs?.discard();
  }

  /** True while datagrams of received runs wait to be handed out. */
  get runPending(): boolean {
    return this.#runs !== undefined && this.#runs.pending;
  }

  /** Points entry i at its own slot and name buffer again, ready to receive. */
  #aim(words: Uint32Array, i: number, maxLength: number): void {
    const word = (i * MMSGHDR_SIZE) / 4;
    setAddress(words, word, this.#namesAddress + i * SOCKADDR_SIZE); // msg_name
    words[word + 2] = SOCKADDR_SIZE; // msg_namelen
    words[word + 12] = 0; // msg_flags
    this.#aimIovec(words, i, i, 1); // a send may have made it a run
    setIovec(this.#iovecWords, i, this.#payloadAddress + i * this.#slotSize, maxLength);
  }

  /** Length of received datagram i. */
  length(i: number): number {
    return this.#headerWords[(i * MMSGHDR_SIZE) / 4 + 14];
  }

  /** Whether slot i holds datagrams a {@linkcode RunTaker} took whole, rather than one datagram. */
  takenWhole(i: number): boolean {
    return (this.#headerWords[(i * MMSGHDR_SIZE) / 4 + 12] & TAKEN_WHOLE) !== 0;
  }

  /** Whether datagram i was opened where it arrived by a {@linkcode RunTaker} that did not take it. */
  opened(i: number): boolean {
    return (this.#headerWords[(i * MMSGHDR_SIZE) / 4 + 12] & OPENED) !== 0;
  }

  /** Whether datagram i was cut short because it did not fit (MSG_TRUNC). */
  truncated(i: number): boolean {
    return (this.#headerWords[(i * MMSGHDR_SIZE) / 4 + 12] & 0x20) !== 0;
  }

  /** Prepares entry i of an outgoing vector as one datagram: its slot, length and destination. */
  prepare(i: number, slot: number, length: number, nameAddress: number, nameLength: number) {
    this.aimDatagram(i, slot, length);
    this.prepareMessage(i, i, 1, length, nameAddress, nameLength);
  }

  /**
   * Aims datagram j of an outgoing vector (its iovecs) at `length` bytes of
   * slot `slot`; or, when `head` is not 0, at `head` bytes of the slot and
   * the rest at `restAt` of the slots' bytes: a split frame, sent without
   * joining it; a whole datagram may start `skip` bytes past the slot's
   * first. Datagrams of one send are aimed in order, from 0.
   */
  aimDatagram(j: number, slot: number, length: number, head = 0, restAt = 0, skip = 0): void {
    const at = j === 0 ? this.capacity : this.#iovecEnd[j - 1];
    const words = this.#iovecWords;
    this.#iovecStart[j] = at;
    this.#slotOf[j] = slot;
    // The iovecs are written here, not by setIovec: an address is a number beyond a small
    // integer, which V8 boxes, an allocation per datagram, when it passes one to a call it did
    // not inline (it may not, deep in a plug's send).
    const start = this.#payloadAddress + slot * this.#slotSize + skip;
    const startHigh = Math.floor(start / 0x100000000);
    const word = at * 4;
    words[word] = start - startHigh * 0x100000000;
    words[word + 1] = startHigh;
    words[word + 3] = 0;
    if (head === 0) {
      words[word + 2] = length;
      this.#iovecEnd[j] = at + 1;
    } else {
      words[word + 2] = head;
      const rest = this.#slotsAddress + restAt;
      const restHigh = Math.floor(rest / 0x100000000);
      words[word + 4] = rest - restHigh * 0x100000000;
      words[word + 5] = restHigh;
      words[word + 6] = length - head;
      words[word + 7] = 0;
      this.#iovecEnd[j] = at + 2;
    }
  }

  /**
   * Prepares entry i to send datagrams [first, first + count), aimed with
   * {@linkcode aimDatagram}, to one destination. More than one go as a UDP GSO
   * message: all of `segment` bytes but the last, which may be shorter, and
   * at most {@linkcode MAX_SEGMENTS} of them.
   */
  prepareMessage(
    i: number,
    first: number,
    count: number,
    segment: number,
    nameAddress: number,
    nameLength: number,
  ): void {
    if (i >= this.#staleBelow) this.#staleBelow = i + 1;
    const words = this.#headerWords;
    const word = (i * MMSGHDR_SIZE) / 4;
    setAddress(words, word, nameAddress);
    words[word + 2] = nameLength;
    const iovec = this.#iovecStart[first];
    this.#aimIovec(words, i, iovec, this.#iovecEnd[first + count - 1] - iovec);
    this.#datagrams[i] = count;
    this.#firstDatagram[i] = first;
    if (count > 1) {
      const control = i * (SEGMENT_CONTROL_SIZE / 4);
      this.#controlWords[control + 4] = segment;
      setAddress(words, word + 8, this.#controlsAddress + control * 4);
      words[word + 10] = SEGMENT_CONTROL_SIZE;
    }
  }

  /**
   * Sends prepared entries [0, count), going on past any that fail (a peer's
   * ICMP error, a full buffer): returns how many frames failed, each the
   * datagrams of one slot to one destination, which count once when more
   * than one failed (the pieces of a cut frame, one after another).
   */
  sendAll(fd: number, count: number): number {
    let failed = 0, failedSlot = -1, failedName = -1;
    for (let from = 0; from < count;) {
      const sent = this.send(fd, from, count);
      if (sent > 0) from += sent;
      else {
        const datagrams = this.#datagrams[from];
        if (datagrams > 1 && (sent === -Errno.EIO || sent === -Errno.EINVAL)) {
          this.segmentationRefused = true;
        }
        const word = (from * MMSGHDR_SIZE) / 4;
        const name = this.#headerWords[word] + this.#headerWords[word + 1] * 0x100000000;
        const first = this.#firstDatagram[from];
        for (let j = first; j < first + datagrams; j++) {
          if (this.#slotOf[j] === failedSlot && name === failedName) continue;
          failedSlot = this.#slotOf[j];
          failedName = name;
          failed++;
        }
        from++;
      }
    }
    return failed;
  }

  /**
   * Sends prepared datagrams [from, count): returns how many left before an
   * error stopped the call, or -errno when the first one failed.
   */
  send(fd: number, from: number, count: number): number {
    const pointer = from === 0
      ? this.#headersPointer
      : Deno.UnsafePointer.offset(this.#headersPointer!, from * MMSGHDR_SIZE);
    const sent = libc.sendmmsg(fd, pointer, count - from, 0);
    return sent < 0 ? -errno() : sent;
  }
}

/** The numeric address of a typed array's first byte, for structures that point into it. */
export function numericAddress(bytes: Uint8Array<ArrayBuffer>): number {
  return Number(addressOf(bytes));
}

const MSG_TRUNC = 0x20;
/** A msg_flags bit the kernel never reports: set on a slot a RunTaker filled. */
const TAKEN_WHOLE = 0x40000000;
/** A msg_flags bit the kernel never reports on a receive (MSG_FASTOPEN): set on a datagram a RunTaker opened. */
const OPENED = 0x20000000;

/** What takes the head of a received UDP_GRO run whole, where it arrived, instead of its datagrams one by one. */
export interface RunTaker {
  /**
   * Offered `count` datagrams at `at` of the receiving vector's slot bytes,
   * each `segment` bytes from the start of the one before and `segment` long
   * but the last (`last`), from the sender at `nameWords[nameWord]` on, for
   * slot `slot`: returns how many from the first it took (0 or 1: none). The
   * bytes stay where they are until the next receive. It sets
   * {@linkcode opened} first.
   */
  takeRun(
    at: number,
    segment: number,
    count: number,
    last: number,
    nameWords: Uint32Array,
    nameWord: number,
    slot: number,
  ): number;
  /**
   * How many datagrams from the first the last {@linkcode takeRun} changed
   * in place (opened, on a keyed network), taken or not: those it did not
   * take are handed out marked {@linkcode DatagramVector.opened}.
   */
  opened: number;
}
/** Bytes of a control message carrying one int: CMSG_SPACE(sizeof(int)). */
const INT_CONTROL_SPACE = 24;
/** How many runs one recvmmsg on a UDP_GRO socket takes. */
export const RUNS_PER_RECEIVE = 8;
/** Room for the runs one receive takes: what a DatagramVector's `runsAt` must leave free. */
export const RECEIVED_RUNS_SIZE = RUNS_PER_RECEIVE * GRO_BUFFER;

/**
 * A recvmmsg vector for a UDP_GRO socket: per entry a buffer for a whole run,
 * the sender's address and room for the UDP_GRO control message that gives
 * the size of the run's datagrams; and how far the runs were handed out.
 */
class ReceivedRuns {
  /** The runs are received into `#bytes` from `#start` on, GRO_BUFFER bytes each. */
  readonly #bytes: Uint8Array<ArrayBuffer>;
  readonly #start: number;
  readonly #names = new Uint8Array(RUNS_PER_RECEIVE * SOCKADDR_SIZE);
  readonly #nameWords = new Uint32Array(this.#names.buffer);
  readonly #controls = new Uint8Array(RUNS_PER_RECEIVE * INT_CONTROL_SPACE);
  readonly #controlWords = new Uint32Array(this.#controls.buffer);
  readonly #iovecs = new Uint32Array(RUNS_PER_RECEIVE * 4);
  readonly #headers = new Uint8Array(RUNS_PER_RECEIVE * MMSGHDR_SIZE);
  readonly #headerWords = new Uint32Array(this.#headers.buffer);
  readonly #headersPointer = Deno.UnsafePointer.of(this.#headers);
  /** Per received entry: its datagrams' size, where the next one starts, where the run ends. */
  readonly #segment = new Int32Array(RUNS_PER_RECEIVE);
  readonly #next = new Int32Array(RUNS_PER_RECEIVE);
  readonly #end = new Int32Array(RUNS_PER_RECEIVE);
  readonly #cut = new Uint8Array(RUNS_PER_RECEIVE);
  /** Per received entry: where the datagrams a taker opened end (0: none). */
  readonly #openedEnd = new Int32Array(RUNS_PER_RECEIVE);
  #entry = 0;
  #entries = 0;
  /** Runs of more than one datagram in the last receive. */
  runsOfMany = 0;
  /** Set when a taker took datagrams whole, which the next receive would overwrite. */
  tookWhole = false;

  constructor(bytes: Uint8Array<ArrayBuffer>, start: number) {
    this.#bytes = bytes;
    this.#start = start;
    const base = numericAddress(bytes) + start;
    const names = numericAddress(this.#names);
    const controls = numericAddress(this.#controls);
    const iovecs = numericAddress(new Uint8Array(this.#iovecs.buffer));
    for (let e = 0; e < RUNS_PER_RECEIVE; e++) {
      setIovec(this.#iovecs, e, base + e * GRO_BUFFER, GRO_BUFFER);
      const word = (e * MMSGHDR_SIZE) / 4;
      setAddress(this.#headerWords, word, names + e * SOCKADDR_SIZE);
      setAddress(this.#headerWords, word + 4, iovecs + e * IOVEC_SIZE);
      this.#headerWords[word + 6] = 1; // msg_iovlen
      setAddress(this.#headerWords, word + 8, controls + e * INT_CONTROL_SPACE);
    }
  }

  discard(): void {
    this.#entry = this.#entries;
  }

  /** True while received datagrams wait to be handed out. */
  get pending(): boolean {
    return this.#entry < this.#entries;
  }

  /** Receives up to RUNS_PER_RECEIVE runs without blocking: how many, or -errno. */
  receive(fd: number): number {
    const words = this.#headerWords;
    for (let e = 0; e < RUNS_PER_RECEIVE; e++) {
      const word = (e * MMSGHDR_SIZE) / 4;
      words[word + 2] = SOCKADDR_SIZE; // msg_namelen
      words[word + 10] = INT_CONTROL_SPACE; // msg_controllen
      words[word + 11] = 0;
      words[word + 12] = 0; // msg_flags
    }
    const received = libc.recvmmsg(fd, this.#headersPointer, RUNS_PER_RECEIVE, MSG_DONTWAIT, null);
    if (received < 0) {
      const code = errno();
      return code === Errno.EAGAIN ? 0 : -code;
    }
    const control = this.#controlWords;
    this.runsOfMany = 0;
    for (let e = 0; e < received; e++) {
      const word = (e * MMSGHDR_SIZE) / 4;
      const length = words[word + 14];
      const c = (e * INT_CONTROL_SPACE) / 4;
      const isRun = words[word + 10] >= 20 && control[c + 2] === SOL_UDP &&
        control[c + 3] === UDP_GRO;
      const segment = isRun ? control[c + 4] : length;
      this.#segment[e] = segment > 0 ? segment : length;
      this.#next[e] = 0;
      this.#openedEnd[e] = 0;
      this.#end[e] = length;
      this.#cut[e] = words[word + 12] & MSG_TRUNC ? 1 : 0;
      if (length > this.#segment[e]) this.runsOfMany++;
    }
    this.#entry = 0;
    this.#entries = received;
    return received;
  }

  /**
   * Copies datagrams into slots [i, end) of a datagram vector (`slots`, its
   * header words and names) while any wait, after offering each run to
   * `taker`; returns the next free slot.
   */
  handOut(
    slots: Uint8Array,
    words: Uint32Array,
    nameWords: Uint32Array,
    payloadOffset: number,
    slotSize: number,
    i: number,
    end: number,
    maxLength: number,
    taker: RunTaker | undefined,
  ): number {
    const bytes = this.#bytes;
    while (i < end && this.#entry < this.#entries) {
      const e = this.#entry;
      const base = this.#start + e * GRO_BUFFER;
      const runEnd = this.#end[e];
      let next = this.#next[e];
      const segment = this.#segment[e];
      // An empty datagram is handed out as one, to be dropped and counted like any malformed one.
      const empty = runEnd === 0;
      // A run offered once and put off to the next batch is not offered again: what the taker
      // opened then is handed out as opened.
      // The taker is asked last: the warm-up, which has none, tests the rest, so that a lone
      // datagram passes here without a test V8 has not seen (a deoptimization on live traffic).
      if (
        next === 0 && runEnd > segment && this.#openedEnd[e] === 0 && bytes === slots &&
        taker !== undefined
      ) {
        // A run cut short by the buffer loses its last datagram: that one is not offered.
        const whole = this.#cut[e] === 1
          ? Math.floor(runEnd / segment)
          : Math.ceil(runEnd / segment);
        const last = this.#cut[e] === 1 ? segment : runEnd - (whole - 1) * segment;
        taker.opened = 0;
        const taken = whole > 1
          ? taker.takeRun(base, segment, whole, last, this.#nameWords, (e * SOCKADDR_SIZE) / 4, i)
          : 0;
        this.#openedEnd[e] = taker.opened * segment;
        if (taken > 1) {
          this.tookWhole = true;
          const word = (i * MMSGHDR_SIZE) / 4;
          words[word + 12] = TAKEN_WHOLE; // msg_flags
          words[word + 14] = 0; // msg_len
          i++;
          next = taken * segment;
          this.#next[e] = next;
          if (next >= runEnd) {
            this.#entry++;
            continue;
          }
        }
      }
      // A run cut at the end of a batch reaches the TAP as two writes: start it in the next batch.
      if (!empty && next === 0 && i > 0 && Math.ceil(runEnd / segment) > end - i) break;
      const nameWord = (e * SOCKADDR_SIZE) / 4;
      for (; i < end && (next < runEnd || (empty && next === 0)); i++) {
        const length = Math.min(segment, runEnd - next);
        const kept = Math.min(length, maxLength);
        const word = (i * MMSGHDR_SIZE) / 4;
        // A run cut short by the buffer loses its last datagram: say so, as for one datagram.
        const cut = kept < length || (this.#cut[e] === 1 && next + length >= runEnd);
        words[word + 12] = (cut ? MSG_TRUNC : 0) | (next < this.#openedEnd[e] ? OPENED : 0); // msg_flags
        words[word + 14] = kept; // msg_len
        const slot = payloadOffset + i * slotSize;
        if (bytes === slots) slots.copyWithin(slot, base + next, base + next + kept);
        else slots.set(bytes.subarray(base + next, base + next + kept), slot);
        const to = (i * SOCKADDR_SIZE) / 4;
        for (let w = 0; w < SOCKADDR_SIZE / 4; w++) {
          nameWords[to + w] = this.#nameWords[nameWord + w];
        }
        next += empty ? 1 : length;
      }
      this.#next[e] = next;
      if (next >= runEnd && (!empty || next > 0)) this.#entry++;
    }
    return i;
  }
}
