/**
 * `vxlan://`: a member of a standard VXLAN network (RFC 7348), as vdeplug4's
 * vxlan module is one, so that it joins the Linux kernel's VXLAN devices and
 * other VTEPs on the same group and VNI.
 *
 * The header is vxvde's (flags 0x08, the VNI in bytes 4-6); the behaviour is
 * what the kernel expects of a peer. One socket, bound to the wildcard
 * address and the network's port, receives the group's datagrams and unicast
 * alike. A MAC is learned with its sender's IP address and the network's
 * port: the kernel sends from a source port it picks per flow, and listens
 * only on the network's port. Multicast loopback is off, and there is one
 * member per host and port. No goodbye is sent: neither vdeplug4 nor the
 * kernel knows one (the kernel drops a bare header without a trace), and a
 * member that comes back has the same address anyway, its host's at the
 * network's port.
 *
 * `peers=` adds members reached by unicast, as the kernel's static flood
 * list does (see plugs/_peers.ts): a kernel VXLAN device is named as a seed;
 * vdeno members also find each other through hellos, which the kernel drops,
 * and say goodbye to each other with an empty hello.
 *
 * @module
 */

import {
  AF_INET6,
  bindSocket,
  interfaceIndex,
  joinGroup,
  numericAddress,
  routeSource,
  sendTo,
  setBufferSize,
  setIPv6Only,
  setMulticastInterface,
  setMulticastLoop,
  setMulticastTtl,
  SOCKADDR_SIZE,
  SocketAddress,
  udpSocket,
} from "../ffi/net.ts";
import { closeQuietly, Errno, SystemError } from "../ffi/libc.ts";
import { Counter, newCounters } from "../core/counters.ts";
import {
  CLOCK_LAG_MS,
  ETH_HEADER,
  type FrameBatch,
  HEADROOM,
  MAX_FRAME,
  SLOT_SIZE,
} from "../core/frames.ts";
import type { Plug, WarmUpResult, WarmUpState } from "../core/plug.ts";
import { parseInteger, parseOptions } from "../core/vnl.ts";
import { MacTable } from "./_mactable.ts";
import { MessagePlanner } from "./_runs.ts";
import { datagramVectors } from "./_datagrams.ts";
import {
  describeTable,
  largestWholeFrame,
  memberFamily,
  type MemberSettings,
  parseGroup,
  parseMemberSettings,
  requireMulticast,
  sendPlanned,
} from "./_overlay.ts";
import { helloHeader, MAX_HELLO, PeerMesh } from "./_peers.ts";
import { DEFAULT_GROUP_V4, DEFAULT_GROUP_V6, HEADER_SIZE, vxvdeHeader } from "./vxvde.ts";
import {
  arpFrame,
  loopbackSockets,
  pingFrame,
  routerSolicitation,
  WARM_LOCAL_MAC,
  WARM_PEER_MACS,
  warmNetworkPlug,
  WarmUpPeer,
} from "./_warmup.ts";

/** The IANA port of VXLAN, the kernel's default too (`dstport 4789`). */
export const VXLAN_PORT = 4789;
const DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024;
/** As vxvde's: large enough for a peer's bursts of GSO runs. */
const DEFAULT_RECEIVE_BUFFER = 16 * 1024 * 1024;

/** vdeplug4's option names, in its order (a prefix picks the first that matches). */
const OPTION_NAMES = [
  "port",
  "vni",
  "ttl",
  "rcvbuf",
  "v6",
  "v4",
  "hashsize",
  "expiretime",
  "if",
  "peers",
  "peertimeout",
] as const;

/** The settings of a vxlan plug, as parsed from its VNL. */
export interface VxlanConfig extends MemberSettings {
  /** The group and the network's port: floods go there, and unicast goes to that port. */
  group: SocketAddress;
  vni: number;
}

/** Parses the part of a vxlan VNL after `vxlan://`. */
export function parseVxlan(rest: string): VxlanConfig {
  const { address, options } = parseOptions("vxlan", rest, OPTION_NAMES);
  const family = memberFamily(address, options);
  const port = parseInteger(options.port ?? String(VXLAN_PORT), "port", 1, 65535);
  const host = address === ""
    ? (family === AF_INET6 ? DEFAULT_GROUP_V6 : DEFAULT_GROUP_V4)
    : address.replace(/^\[(.*)\]$/, "$1");
  const group = parseGroup("vxlan", host, port, family);
  requireMulticast("vxlan", group, host);
  return {
    group,
    vni: parseInteger(options.vni ?? "1", "vni", 0, 0xffffff),
    ...parseMemberSettings(options, port, group.family),
  };
}

/** A member of a VXLAN network. */
export class VxlanPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  /** The plug's counters; a scratch set while it warms up. */
  counters: Float64Array = newCounters();
  readonly config: VxlanConfig;
  /** The plug's MAC table; a scratch one while it warms up. */
  table: MacTable;
  readonly largestWholeFrame?: number;
  /** Split frames are sent as they are. */
  readonly sendsSplitFrames = true;
  /** The plug's socket; a loopback one of its own while it warms up. */
  #fd: number;
  readonly #headerHigh: number;
  readonly #headerLow: number;
  /** The network's port in network byte order, as it stands in a sockaddr (the warm-up's peer's meanwhile). */
  #portHigh: number;
  #portLow: number;
  readonly #planner: MessagePlanner;
  /** One vector per batch serves both ways: every receive re-aims its entries at their slots. */
  readonly #vectors = datagramVectors(HEADER_SIZE);
  #closed = false;
  /** With `peers=`: the members reached by unicast, and their hellos. */
  readonly #mesh?: PeerMesh;
  readonly #helloHigh: number;
  /** A hello (or goodbye) to members: the hello header, then the body. */
  readonly #control = new Uint8Array(HEADER_SIZE + MAX_HELLO);

  constructor(vnl: string, rest: string) {
    this.vnl = vnl;
    const config = this.config = parseVxlan(rest);
    const family = config.group.family;
    const ifindex = config.interfaceName === undefined ? 0 : interfaceIndex(config.interfaceName);
    let fd = -1;
    try {
      fd = udpSocket(family);
      setBufferSize(fd, "receive", config.receiveBuffer ?? DEFAULT_RECEIVE_BUFFER);
      setBufferSize(fd, "send", DEFAULT_SOCKET_BUFFER);
      setMulticastTtl(fd, family, config.ttl);
      setMulticastLoop(fd, family, false);
      // As the kernel's VXLAN sockets: an IPv6 network leaves the port free for an IPv4 one.
      if (family === AF_INET6) setIPv6Only(fd);
      // No SO_REUSEADDR: a second member on this port must fail, not share it silently.
      bindSocket(fd, SocketAddress.any(family).withPort(config.group.port));
      joinGroup(fd, config.group, ifindex);
      if (ifindex > 0) setMulticastInterface(fd, family, ifindex);
    } catch (error) {
      closeQuietly(fd);
      if (error instanceof SystemError && error.code === Errno.EADDRINUSE) {
        throw new Error(
          `Cannot open ${vnl}: port ${config.group.port} is taken on this host (by another ` +
            `vxlan member, vde_plug or a kernel VXLAN device); one member per host and port: ` +
            `use another port= for another network`,
        );
      }
      throw new Error(`Cannot open ${vnl}: ${(error as Error).message}`);
    }
    this.#fd = fd;
    const hello = helloHeader(vxvdeHeader(config.vni));
    this.#helloHigh = new DataView(hello.buffer).getUint32(0, true);
    this.#control.set(hello);
    if (config.peers) {
      // Others see us at the address this host sends from toward them, at the port.
      const local = routeSource(config.peers[0]) ?? SocketAddress.any(family);
      const listener = { address: local.withPort(config.group.port), listening: true };
      this.#mesh = new PeerMesh(config.peers, listener, config.peerTimeout, {
        sendHello: (body, length, to) => {
          this.#control.set(body.subarray(0, length), HEADER_SIZE);
          sendTo(fd, this.#control, HEADER_SIZE + length, to ?? config.group);
        },
        // The kernel drops a bare header; vdeno members take an empty hello as a goodbye.
        sendGoodbye: (to) => sendTo(fd, this.#control, HEADER_SIZE, to),
        forgetMacs: (address) => this.table.forget(new Uint32Array(address.bytes.buffer), 0),
      });
    }
    this.fds = this.#mesh ? [fd, this.#mesh.timerFd] : [fd];
    const largest = largestWholeFrame(config.group, ifindex, HEADER_SIZE);
    if (largest !== undefined) this.largestWholeFrame = largest;
    const headerView = new DataView(vxvdeHeader(config.vni).buffer);
    this.#headerHigh = headerView.getUint32(0, true);
    this.#headerLow = headerView.getUint32(4, true);
    this.#portHigh = config.group.bytes[2];
    this.#portLow = config.group.bytes[3];
    this.#planner = new MessagePlanner(config.group.length);
    this.table = new MacTable(config.hashSize, config.expireSeconds, this.counters, vnl);
    this.#aimPlanner(config.group);
  }

  /** Tells the send planner where the group (or its stand-in) and the table's peer addresses are. */
  #aimPlanner(group: SocketAddress): void {
    this.#planner.setAddresses(numericAddress(group.bytes), numericAddress(this.table.addresses));
  }

  /**
   * Runs receive and send on synthetic frames through loopback sockets of its own (see
   * {@linkcode startWarmUp}). Not where the loopback is down.
   */
  warmUp(batch: FrameBatch): WarmUpResult {
    const state = this.startWarmUp(batch);
    if (!state) return { framesIn: 0, framesOut: 0 };
    return warmNetworkPlug(this, state, batch, () => 1);
  }

  /**
   * Puts a loopback socket of its own in place of the plug's, and a scratch MAC table and
   * counters in place of its own; a second loopback socket stands for the group and for every
   * member, at its port (which replies go to, as to a member at the network's port). Each round
   * it sends the plug a broadcast and a ping; what the plug sends comes back to it and is
   * drained; with `peers=`, the copies of floods for the members go to it too. Undefined where
   * the loopback is down.
   */
  startWarmUp(batch: FrameBatch): WarmUpState | undefined {
    const saved = {
      counters: this.counters,
      table: this.table,
      fd: this.#fd,
      portHigh: this.#portHigh,
      portLow: this.#portLow,
    };
    const timeMs = batch.timeMs;
    const sockets = loopbackSockets(2);
    if (!sockets) return undefined;
    const { fds } = sockets;
    const [own, peerFd] = fds;
    const [ownAddress, peerAddress] = sockets.addresses;
    const scratch = newCounters();
    const table = new MacTable(1024, this.config.expireSeconds, scratch, `${this.vnl} warm-up`);
    this.counters = scratch;
    this.table = table;
    this.#fd = own;
    this.#portHigh = peerAddress.bytes[2];
    this.#portLow = peerAddress.bytes[3];
    this.#aimPlanner(peerAddress);
    const giveMembersBack = this.#mesh?.copyFloodsOnlyTo(peerAddress);
    // The peer's datagrams are made in a batch of its own, and what it receives read into it.
    const { batch: peerBatch, view: peerView, at, vector: peerVector } = new WarmUpPeer(
      HEADER_SIZE,
    );
    const header = vxvdeHeader(this.config.vni);
    const fromPeer = (length: number) => {
      peerBatch.bytes.set(header, at - HEADER_SIZE);
      sendTo(peerFd, peerBatch.bytes.subarray(at - HEADER_SIZE), HEADER_SIZE + length, ownAddress);
    };
    return {
      fds: [own],
      feed: (round) => {
        const peer = WARM_PEER_MACS[round % 2];
        fromPeer(
          round % 2 === 0 ? arpFrame(peerView, at, peer) : routerSolicitation(peerView, at, peer),
        );
        fromPeer(pingFrame(peerView, at, WARM_LOCAL_MAC, peer));
        if (round % 8 === 0) batch.timeMs += 1000;
      },
      drain: () => {
        while (peerVector.receiveInto(peerFd, 0, peerBatch.capacity, HEADER_SIZE + MAX_FRAME) > 0);
      },
      end: () => {
        this.counters = saved.counters;
        this.table = saved.table;
        this.#fd = saved.fd;
        this.#portHigh = saved.portHigh;
        this.#portLow = saved.portLow;
        this.#aimPlanner(this.config.group);
        giveMembersBack?.();
        batch.timeMs = timeMs;
        batch.count = 0;
        for (const fd of fds) closeQuietly(fd);
        return { framesIn: scratch[Counter.framesIn], framesOut: scratch[Counter.framesOut] };
      },
    };
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    if (readyMask & 2) this.#mesh?.tick();
    if (!(readyMask & 1)) return true;
    const first = batch.count;
    if (first >= batch.capacity) return true;
    const vector = this.#vectors.of(batch);
    const received = vector.receiveInto(
      this.#fd,
      first,
      batch.capacity - first,
      HEADER_SIZE + MAX_FRAME + 64,
    );
    if (received <= 0) {
      if (received < 0) this.counters[Counter.dropMalformed]++;
      return true;
    }
    const words = batch.words;
    const names = vector.names;
    const counters = this.counters;
    this.table.setClock(batch.timeMs / 1000);
    for (let i = first; i < first + received; i++) {
      const datagramLength = vector.length(i);
      const headerWord = (i * SLOT_SIZE + HEADROOM - HEADER_SIZE) >>> 2;
      const frameLength = datagramLength - HEADER_SIZE;
      batch.lengths[i] = 0;
      if (datagramLength < HEADER_SIZE) {
        counters[Counter.dropMalformed]++;
        continue;
      }
      // The whole header, as the kernel checks it: other flags or non-zero reserved bytes drop.
      if (words[headerWord] !== this.#headerHigh || words[headerWord + 1] !== this.#headerLow) {
        if (
          this.#mesh && words[headerWord] === this.#helloHigh &&
          words[headerWord + 1] === this.#headerLow && frameLength <= MAX_HELLO &&
          !vector.truncated(i)
        ) {
          const name = names.subarray(i * SOCKADDR_SIZE, (i + 1) * SOCKADDR_SIZE);
          const at = i * SLOT_SIZE + HEADROOM;
          const body = batch.bytes.subarray(at, at + frameLength);
          if (!this.#mesh.receiveHello(name, body, false)) counters[Counter.dropMalformed]++;
          continue;
        }
        counters[Counter.dropWrongHeader]++;
        continue;
      }
      if (frameLength <= ETH_HEADER) {
        counters[Counter.dropTooShort]++;
        continue;
      }
      if (frameLength > MAX_FRAME || vector.truncated(i)) {
        counters[Counter.dropTooLong]++;
        continue;
      }
      // Replies go to the sender's address at the network's port, not to its source port.
      const nameOffset = i * SOCKADDR_SIZE;
      names[nameOffset + 2] = this.#portHigh;
      names[nameOffset + 3] = this.#portLow;
      this.table.learn(
        batch.bytes,
        i * SLOT_SIZE + HEADROOM + 6,
        vector.nameWords,
        nameOffset >>> 2,
      );
      batch.lengths[i] = frameLength;
      counters[Counter.framesIn]++;
      counters[Counter.bytesIn] += frameLength;
    }
    batch.count = first + received;
    return true;
  }

  send(batch: FrameBatch): void {
    const vector = this.#vectors.of(batch);
    const bytes = batch.bytes;
    const words = batch.words;
    const counters = this.counters;
    this.table.setClock((batch.timeMs + CLOCK_LAG_MS) / 1000);
    const planner = this.#planner;
    const split = batch.splitFrames;
    planner.start(vector, vector.segmentationRefused ? 0 : this.largestWholeFrame ?? 0);
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      if (length < ETH_HEADER) {
        counters[Counter.dropTooShort]++;
        continue;
      }
      const frameOffset = i * SLOT_SIZE + HEADROOM;
      const headerWord = (frameOffset - HEADER_SIZE) >>> 2;
      words[headerWord] = this.#headerHigh;
      words[headerWord + 1] = this.#headerLow;
      const slot = this.table.lookup(bytes, frameOffset);
      // A split frame's datagram: the encapsulation and the frame's head, then its rest.
      const head = split === 0 || batch.heads[i] === 0 ? 0 : batch.heads[i] + HEADER_SIZE;
      const restAt = head === 0 ? 0 : batch.rests[i];
      const datagram = length + HEADER_SIZE;
      if (slot < 0) {
        const flood = planner.single(i, datagram, head, restAt);
        this.#mesh?.noteFlood(flood, datagram);
        counters[Counter.sentMulticast]++;
      } else {
        planner.toPeer(
          i,
          datagram,
          slot * SOCKADDR_SIZE,
          length,
          head,
          restAt,
        );
        counters[Counter.sentUnicast]++;
      }
      counters[Counter.framesOut]++;
      counters[Counter.bytesOut] += length;
    }
    sendPlanned(this.vnl, this.#fd, vector, planner, counters, this.#mesh);
  }

  describe(): Record<string, unknown> {
    return {
      group: this.config.group.toString(),
      vni: this.config.vni,
      port: this.config.group.port,
      ...describeTable(this.table, this.config.expireSeconds, this.#mesh),
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#mesh?.close();
    closeQuietly(this.#fd);
  }
}
