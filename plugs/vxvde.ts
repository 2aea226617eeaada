/**
 * `vxvde://`: VDE's Local Area Cloud, a distributed switch with no daemon.
 *
 * Every plug joins one UDP multicast group. Frames for broadcast, multicast or
 * unknown MACs go to the group; frames for a MAC learned from a peer go
 * straight to that peer's unicast socket. Byte-compatible with vdeplug4's
 * vxvde module: the same 8-byte header, the same self-echo filter, learning,
 * expiry and goodbye.
 *
 * Datagrams move in batches (recvmmsg/sendmmsg) between the sockets and the
 * caller's frame slots, with the header written into each slot's headroom, so
 * no frame is copied on the way.
 *
 * `key=FILE` (or `key=env:NAME`) makes a keyed network: every datagram is
 * sealed with AES-256-GCM (see plugs/seal.ts) and the header carries a mark
 * that makes unkeyed plugs, vdeplug4's included, drop it.
 *
 * `peers=` adds members reached by unicast, for underlays without multicast
 * (see plugs/_peers.ts).
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  bindSocket,
  type DatagramVector,
  enableReceiveRuns,
  formatSocketAddress,
  interfaceIndex,
  joinGroup,
  localAddress,
  localAddressKeys,
  numericAddress,
  type RunTaker,
  sendTo,
  setBufferSize,
  setMulticastInterface,
  setMulticastTtl,
  setReuseAddress,
  setTtl,
  SOCKADDR_SIZE,
  SocketAddress,
  udpSocket,
} from "../ffi/net.ts";
import { closeQuietly } from "../ffi/libc.ts";
import { randomBytes } from "../ffi/crypto.ts";
import { Counter, newCounters } from "../core/counters.ts";
import {
  CLOCK_LAG_MS,
  ETH_HEADER,
  FrameBatch,
  HEADROOM,
  MAX_FRAME,
  type PerBatch,
  SLOT_SIZE,
} from "../core/frames.ts";
import { log } from "../core/log.ts";
import { MacTable } from "./_mactable.ts";
import { MessagePlanner } from "./_runs.ts";
import { datagramVectors } from "./_datagrams.ts";
import { coalesceRun } from "./_offload.ts";
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
import type { Plug, WarmUpResult, WarmUpState } from "../core/plug.ts";
import { bindMember, helloHeader, PeerMesh } from "./_peers.ts";
import {
  type DatagramSource,
  destinationTag,
  KEY_SIZE,
  loadKey,
  SEALED_PREFIX,
  sealedHeader,
  Sealer,
  Verdict,
} from "./seal.ts";
import { groupId, parseInteger, parseOptions, VnlError } from "../core/vnl.ts";
import { HEADER_SIZE, vxvdeHeader } from "./_vxheader.ts";
import {
  arpFrame,
  loopbackSockets,
  pingFrame,
  routerSolicitation,
  tcpFrame,
  WARM_LOCAL_MAC,
  WARM_LOOP_MAC,
  WARM_PEER_MACS,
  warmNetworkPlug,
  WarmUpPeer,
} from "./_warmup.ts";

export { HEADER_SIZE, vxvdeHeader };

export const DEFAULT_GROUP_V4 = "239.0.0.1";
export const DEFAULT_GROUP_V6 = "ff05:56de::1";
export const DEFAULT_PORT = 14789;
/** Socket buffers large enough to ride out a burst while the loop is busy elsewhere. */
const DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024;
/**
 * Room for a peer's GSO bursts (up to 64 datagrams per message) while the
 * loop is busy; the kernel charges it only while datagrams wait in it.
 */
const DEFAULT_RECEIVE_BUFFER = 16 * 1024 * 1024;

const OPTION_NAMES = [
  "port",
  "vni",
  "grp",
  "ttl",
  "rcvbuf",
  "v6",
  "v4",
  "hashsize",
  "expiretime",
  "if",
  "bind",
  "key",
  "peers",
  "peertimeout",
] as const;

/** The settings of a vxvde plug, as parsed from its VNL. */
export interface VxvdeConfig extends MemberSettings {
  group: SocketAddress;
  vni: number;
  bindAddress?: string;
  /** `key=`: a key file, or `env:NAME`; the network is sealed (see plugs/seal.ts). */
  key?: string;
}

/** Parses the part of a vxvde VNL after `vxvde://`. */
export function parseVxvde(rest: string): VxvdeConfig {
  if (/\/k(ey?)?=\//.test(rest)) {
    throw new VnlError(
      `Bad key: a key file path has slashes, which separate options; quote it: key='/etc/vdeno/lan.key'`,
    );
  }
  const { address, options } = parseOptions("vxvde", rest, OPTION_NAMES);
  const family = memberFamily(address, options);
  const port = parseInteger(options.port ?? String(DEFAULT_PORT), "port", 1, 65535);
  const host = address === ""
    ? (family === AF_INET6 ? DEFAULT_GROUP_V6 : DEFAULT_GROUP_V4)
    : address;
  let group = parseGroup("vxvde", host, port, family);
  const grp = options.grp === undefined ? undefined : groupId(options.grp, "grp");
  if (grp !== undefined) {
    const ip = group.ip;
    ip[ip.length - 3] = (grp >> 16) & 0xff;
    ip[ip.length - 2] = (grp >> 8) & 0xff;
    ip[ip.length - 1] = grp & 0xff;
  }
  requireMulticast("vxvde", group, host);
  group = group.withPort(port);
  const vni = options.vni !== undefined ? groupId(options.vni, "vni") : grp ?? 1;
  if (vni > 0xffffff) throw new VnlError(`Bad vni: ${vni}; a VNI has 24 bits (0 to 16777215)`);
  return {
    group,
    vni,
    ...parseMemberSettings(options, port, group.family),
    bindAddress: options.bind,
    key: options.key,
  };
}

/** Addresses of this host, refreshed on demand, to recognise our own multicast echo. */
class LocalAddresses {
  #keys = localAddressKeys();
  #refreshedAt = Date.now();

  has(family: number, ip: Uint8Array): boolean {
    // With the multicast route on the loopback (one machine, no network), the
    // kernel finds no address of link scope and sends from 0.0.0.0 (or ::):
    // only this host can be that sender.
    if (ip.every((byte) => byte === 0)) return true;
    const key = `${family}:${ip.join(",")}`;
    if (this.#keys.has(key)) return true;
    if (Date.now() - this.#refreshedAt < 1000) return false;
    this.#keys = localAddressKeys();
    this.#refreshedAt = Date.now();
    return this.#keys.has(key);
  }
}

/** A plug on a vxvde network. */
export class VxvdePlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  /** Counters; a warm-up puts scratch ones in their place while it runs. */
  counters: Float64Array = newCounters();
  readonly config: VxvdeConfig;
  /** Learned MACs; a warm-up puts a table of its own in its place while it runs. */
  table: MacTable;
  readonly largestWholeFrame?: number;
  /** Split frames are sent as they are, but on a keyed network, where sealing joins them. */
  get sendsSplitFrames(): boolean {
    return this.#sealer === undefined;
  }
  /** The sockets; a warm-up puts loopback sockets of its own in their place while it runs. */
  #multicastFd: number;
  #unicastFd: number;
  #unicastPort: number;
  readonly #header: Uint8Array<ArrayBuffer>;
  readonly #helloHeader: Uint8Array<ArrayBuffer>;
  readonly #headerHigh: number;
  readonly #headerLow: number;
  readonly #localAddresses = new LocalAddresses();
  readonly #nameLength: number;
  /** Seals and opens datagrams on a keyed network; undefined on an open one. */
  #sealer?: Sealer;
  /**
   * Where frames and control datagrams for the group go: the group; a warm-up's peer while it
   * runs (see {@linkcode #aimPlanner}).
   */
  #groupTarget: SocketAddress;
  /** Bytes before the frame in a datagram: the header, and on a keyed network the seal. */
  readonly #prefix: number;
  /** First header word of an open network on our VNI (the second is the same as ours). */
  readonly #plainHigh: number;
  /** First header word of a keyed network on our VNI (the second is the same as ours). */
  readonly #sealedHigh: number;
  readonly #mismatch: MismatchWarnings;
  /** Where the datagram being opened came from: one object, refilled per datagram. */
  readonly #source: DatagramSource = { names: new Uint8Array(0), offset: 0, fromGroup: false };
  /** One vector per batch serves both ways: every receive re-aims its entries at their slots. */
  readonly #vectors: PerBatch<DatagramVector>;
  readonly #planner: MessagePlanner;
  #closed = false;
  /** Whether the unicast socket hands over runs of datagrams (UDP_GRO). */
  #receiveRuns = false;
  #lastVector?: DatagramVector;
  /**
   * Set when the other plug of the cable takes held frames (see {@linkcode holdFrames}): runs of
   * TCP segments are then merged where they arrived, for the batch and its view below.
   */
  #runTaker?: RunTaker;
  #takingFor?: FrameBatch;
  #takingView = new DataView(new ArrayBuffer(0));
  /** The names of the runs offered to {@linkcode #takeRun}, as bytes. */
  #runNames: Uint8Array = new Uint8Array(0);
  /** With `peers=`: the members reached by unicast, and their hellos. */
  readonly #mesh?: PeerMesh;
  readonly #helloHigh: number;
  /** A slot for goodbyes and hellos, which are written and sealed apart from the frames. */
  #controlBatch?: FrameBatch;

  constructor(vnl: string, rest: string) {
    this.vnl = vnl;
    const config = this.config = parseVxvde(rest);
    const family = config.group.family;
    const ifindex = config.interfaceName === undefined ? 0 : interfaceIndex(config.interfaceName);
    if (config.key !== undefined) {
      const secret = loadKey(config.key);
      try {
        this.#sealer = new Sealer(secret, { vni: config.vni, group: config.group.bytes });
      } finally {
        secret.fill(0);
      }
    }
    this.#prefix = this.#sealer ? SEALED_PREFIX : HEADER_SIZE;
    this.#vectors = datagramVectors(this.#prefix);
    let multicastFd = -1, unicastFd = -1;
    try {
      multicastFd = udpSocket(family);
      unicastFd = udpSocket(family);
      setBufferSize(unicastFd, "receive", config.receiveBuffer ?? DEFAULT_RECEIVE_BUFFER);
      setBufferSize(multicastFd, "receive", config.receiveBuffer ?? DEFAULT_RECEIVE_BUFFER);
      setBufferSize(unicastFd, "send", DEFAULT_SOCKET_BUFFER);
      // Peers send runs of datagrams as one UDP GSO message: taken as one, they cost the kernel
      // one packet on the way in too (bench/README.md).
      this.#receiveRuns = enableReceiveRuns(unicastFd);
      // With peers=, members may be routers away: ttl= bounds only what goes to the group.
      if (config.peers) setMulticastTtl(unicastFd, family, config.ttl);
      else setTtl(unicastFd, family, config.ttl);
      setReuseAddress(multicastFd);
      bindSocket(multicastFd, config.group);
      joinGroup(multicastFd, config.group, ifindex);
      const bindTo = config.bindAddress === undefined || config.bindAddress === ""
        ? SocketAddress.any(family)
        : SocketAddress.parse(config.bindAddress, 0, family);
      if (!bindTo) {
        throw new VnlError(
          `Bad bind address: ${JSON.stringify(config.bindAddress)}; expected a numeric ${
            family === AF_INET ? "IPv4" : "IPv6"
          } address of this host`,
        );
      }
      if (config.peers) {
        const listener = bindMember(
          unicastFd,
          family,
          config.group.port,
          config.bindAddress ? bindTo : undefined,
          config.peers,
        );
        if (listener.taken) {
          log(
            "warn",
            `${vnl}: another plug listens on ${listener.taken}; this one reaches the members from ${listener.address} and cannot be a seed`,
          );
        }
        this.#mesh = new PeerMesh(config.peers, listener, config.peerTimeout, {
          sendHello: (body, length, to) => this.#sendControl(this.#helloHeader, body, length, to),
          sendGoodbye: (to) => this.#sendControl(this.#header, undefined, 0, to),
          forgetMacs: (address) => this.table.forget(new Uint32Array(address.bytes.buffer), 0),
        });
      } else bindSocket(unicastFd, bindTo);
      if (ifindex > 0) setMulticastInterface(unicastFd, family, ifindex);
    } catch (error) {
      this.#mesh?.close(false);
      closeQuietly(multicastFd);
      closeQuietly(unicastFd);
      this.#sealer?.close();
      if (error instanceof VnlError) throw error;
      throw new Error(`Cannot open ${vnl}: ${(error as Error).message}`);
    }
    this.#multicastFd = multicastFd;
    this.#unicastFd = unicastFd;
    this.#groupTarget = config.group;
    this.#unicastPort = localAddress(unicastFd).port;
    if (this.#sealer) {
      this.#sealer.setLocalPort(this.#unicastPort);
      this.#sealer.onEvent = (message) => log("info", `${vnl}: ${message}`);
      this.#sealer.greet(Date.now() / 1000);
      this.#sendOutgoing();
    }
    const largest = largestWholeFrame(config.group, ifindex, this.#prefix);
    if (largest !== undefined) this.largestWholeFrame = largest;
    // Sealed, a longer frame goes in pieces (see plugs/seal.ts) rather than as IP fragments.
    if (this.#sealer && largest !== undefined && largest > ETH_HEADER) {
      this.#sealer.setPieceLimit(largest);
    }
    this.fds = this.#mesh ? [multicastFd, unicastFd, this.#mesh.timerFd] : [multicastFd, unicastFd];
    this.#header = this.#sealer ? sealedHeader(config.vni) : vxvdeHeader(config.vni);
    const headerView = new DataView(this.#header.buffer);
    this.#helloHeader = helloHeader(this.#header);
    this.#helloHigh = new DataView(this.#helloHeader.buffer).getUint32(0, true);
    this.#headerHigh = headerView.getUint32(0, true);
    this.#headerLow = headerView.getUint32(4, true);
    this.#plainHigh = new DataView(vxvdeHeader(config.vni).buffer).getUint32(0, true);
    this.#sealedHigh = new DataView(sealedHeader(config.vni).buffer).getUint32(0, true);
    this.#mismatch = new MismatchWarnings(vnl);
    this.#nameLength = config.group.length;
    this.#planner = new MessagePlanner(this.#nameLength);
    this.table = new MacTable(config.hashSize, config.expireSeconds, this.counters, vnl);
    this.#aimPlanner();
  }

  /** Tells the send planner where {@linkcode #groupTarget} and the table's peer addresses are. */
  #aimPlanner(): void {
    this.#planner.setAddresses(
      numericAddress(this.#groupTarget.bytes),
      numericAddress(this.table.addresses),
    );
  }

  /**
   * Hands runs of one TCP stream's segments received with UDP_GRO to the other plug as held
   * frames: one slot each, the merged headers in it and the payloads where they arrived, with no
   * copy (core/frames.ts). On a keyed network the datagrams are opened where they arrived first.
   */
  holdFrames(): void {
    if (!this.#receiveRuns) return;
    this.#runTaker = {
      takeRun: (at, segment, count, last, nameWords, nameWord, slot) =>
        this.#takeRun(at, segment, count, last, nameWords, nameWord, slot),
      opened: 0,
    };
  }

  /**
   * Takes the head of a run whole when its datagrams are frames of this network that merge as one
   * TCP super-frame (see {@linkcode RunTaker}); anything else goes its own way, datagram by
   * datagram, and is checked and counted there.
   */
  #takeRun(
    at: number,
    segment: number,
    count: number,
    last: number,
    nameWords: Uint32Array,
    nameWord: number,
    slot: number,
  ): number {
    const batch = this.#takingFor!;
    const view = this.#takingView;
    const prefix = this.#prefix;
    const length = segment - prefix;
    if (length <= ETH_HEADER || length > MAX_FRAME) return 0;
    let whole = last - prefix > ETH_HEADER ? count : count - 1;
    for (let k = 0; k < whole; k++) {
      const header = at + k * segment;
      if (
        view.getUint32(header, true) !== this.#headerHigh ||
        view.getUint32(header + 4, true) !== this.#headerLow
      ) whole = k;
    }
    if (this.#sealer) whole = this.#openRun(at, segment, whole, count, last, nameWords, nameWord);
    if (whole < 2) return 0;
    const lastLength = whole === count ? last - prefix : length;
    const taken = coalesceRun(batch, view, at + prefix, segment, whole, length, lastLength, slot);
    if (taken < 2) return 0;
    this.table.learn(batch.bytes, at + prefix + 6, nameWords, nameWord);
    const counters = this.counters;
    counters[Counter.framesIn] += taken;
    counters[Counter.bytesIn] += (taken - 1) * length + (taken === whole ? lastLength : length);
    return taken;
  }

  /**
   * Opens the first `whole` of a run's `count` datagrams where they arrived, as long as they are
   * frames of proven senders, authentic and fresh (see {@linkcode Sealer.openInRun}); returns how
   * many from the first were opened, and tells the run taker, so that those not merged into a
   * held frame are handed out as opened. The first that is not is opened, or not, with the
   * others, datagram by datagram.
   */
  #openRun(
    at: number,
    segment: number,
    whole: number,
    count: number,
    last: number,
    nameWords: Uint32Array,
    nameWord: number,
  ): number {
    const sealer = this.#sealer!;
    const batch = this.#takingFor!;
    const source = this.#source;
    if (this.#runNames.buffer !== nameWords.buffer) {
      this.#runNames = new Uint8Array(nameWords.buffer);
    }
    source.names = this.#runNames;
    source.offset = nameWord * 4;
    source.fromGroup = false;
    const now = this.#seconds(batch, false);
    const prefix = this.#prefix;
    let opened = 0;
    for (; opened < whole; opened++) {
      const length = (opened === count - 1 ? last : segment) - prefix;
      if (sealer.openInRun(batch.bytes, at, segment, opened, length, now, source) !== Verdict.ok) {
        break;
      }
    }
    this.#runTaker!.opened = opened;
    return opened;
  }

  /** True while datagrams of a run received on the unicast socket wait for the next batch. */
  get backlog(): boolean {
    return this.#receiveRuns && this.#lastVector !== undefined && this.#lastVector.runPending;
  }

  /** The ephemeral port of the socket every datagram of this plug leaves from. */
  get unicastPort(): number {
    return this.#unicastPort;
  }

  /**
   * The time in seconds for `batch`'s frames: the batch's clock, which lags by up to
   * {@linkcode CLOCK_LAG_MS}; `latest` allows for that lag, so that no address is used past its
   * expiry. A keyed network reads the clock afresh: its seals carry the time, and peers refuse
   * seals two minutes off.
   */
  #seconds(batch: FrameBatch, latest: boolean): number {
    return (latest ? batch.timeMs + CLOCK_LAG_MS : batch.timeMs) / 1000;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    if (readyMask & 1) this.#receiveFrom(batch, this.#multicastFd, true);
    if (readyMask & 2) this.#receiveFrom(batch, this.#unicastFd, false);
    if (readyMask & 4) this.#mesh?.tick();
    return true;
  }

  #receiveFrom(batch: FrameBatch, fd: number, fromGroup: boolean): void {
    const first = batch.count;
    if (first >= batch.capacity) return;
    const vector = this.#lastVector = this.#vectors.of(batch);
    const runsBefore = vector.runsReceived;
    const now = this.#seconds(batch, false);
    this.table.setClock(now); // runs taken whole learn within the receive
    const maxLength = this.#prefix + MAX_FRAME + 64;
    let received: number;
    if (this.#receiveRuns && !fromGroup) {
      // Set with no taker too, so that the warm-up runs this branch before traffic: a branch
      // V8 first meets on a live datagram costs a deoptimization then.
      if (this.#takingFor !== batch) {
        this.#takingFor = batch;
        this.#takingView = new DataView(batch.bytes.buffer);
      }
      received = vector.receiveRunInto(
        fd,
        first,
        batch.capacity - first,
        maxLength,
        this.#runTaker,
      );
    } else received = vector.receiveInto(fd, first, batch.capacity - first, maxLength);
    this.counters[Counter.superFramesIn] += vector.runsReceived - runsBefore;
    if (received <= 0) {
      if (received < 0) this.counters[Counter.dropMalformed]++;
      return;
    }
    const bytes = batch.bytes;
    const words = batch.words;
    const nameWords = vector.nameWords;
    const names = vector.names;
    const counters = this.counters;
    const prefix = this.#prefix;
    const sealer = this.#sealer;
    for (let i = first; i < first + received; i++) {
      if (vector.takenWhole(i)) continue; // a held frame, checked and counted by #takeRun
      const datagramLength = vector.length(i);
      const headerWord = (i * SLOT_SIZE + HEADROOM - prefix) >>> 2;
      let frameLength = datagramLength - prefix;
      batch.lengths[i] = 0;
      if (datagramLength < HEADER_SIZE) {
        counters[Counter.dropMalformed]++;
        continue;
      }
      if (words[headerWord] !== this.#headerHigh || words[headerWord + 1] !== this.#headerLow) {
        if (
          this.#mesh && words[headerWord] === this.#helloHigh &&
          words[headerWord + 1] === this.#headerLow
        ) {
          this.#receiveHello(batch, vector, i, frameLength, fromGroup, now);
          continue;
        }
        if (sealer && this.#isPlaintext(words, headerWord)) {
          counters[Counter.dropAuthFailed]++;
          this.#mismatch.note(Mismatch.plaintext, names, i * SOCKADDR_SIZE, now);
        } else {
          counters[Counter.dropWrongHeader]++;
          if (!sealer && this.#isSealed(words, headerWord)) {
            this.#mismatch.note(Mismatch.sealed, names, i * SOCKADDR_SIZE, now);
          }
        }
        continue;
      }
      // Too long to open: left to the dropTooLong check below.
      if (sealer && frameLength <= MAX_FRAME && !vector.truncated(i) && !vector.opened(i)) {
        if (frameLength < 0) {
          counters[Counter.dropMalformed]++;
          continue;
        }
        const source = this.#source;
        source.names = names;
        source.offset = i * SOCKADDR_SIZE;
        source.fromGroup = fromGroup;
        const verdict = sealer.open(batch, i, frameLength, now, source);
        if (verdict === Verdict.joined) frameLength = sealer.joinedLength;
        else if (verdict !== Verdict.ok) {
          this.#countVerdict(verdict, names, i * SOCKADDR_SIZE, now);
          continue;
        }
      }
      const nameWord = (i * SOCKADDR_SIZE) >>> 2;
      if (frameLength === 0) {
        counters[Counter.goodbyesReceived]++;
        this.table.forget(nameWords, nameWord, now);
        this.#mesh?.receiveGoodbye(names.subarray(i * SOCKADDR_SIZE));
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
      const nameOffset = i * SOCKADDR_SIZE;
      if (
        fromGroup && ((names[nameOffset + 2] << 8) | names[nameOffset + 3]) === this.#unicastPort
      ) {
        const family = names[nameOffset] | (names[nameOffset + 1] << 8);
        const ip = family === AF_INET
          ? names.subarray(nameOffset + 4, nameOffset + 8)
          : names.subarray(nameOffset + 8, nameOffset + 24);
        if (this.#localAddresses.has(family, ip)) {
          counters[Counter.dropOwnEcho]++;
          continue;
        }
      }
      const frameOffset = i * SLOT_SIZE + HEADROOM;
      this.table.learn(bytes, frameOffset + 6, nameWords, nameWord);
      batch.lengths[i] = frameLength;
      counters[Counter.framesIn]++;
      counters[Counter.bytesIn] += frameLength;
    }
    batch.count = first + received;
    if (sealer?.hasOutgoing) this.#sendOutgoing();
  }

  /** Counts a sealed datagram that was not delivered, and warns of a key mismatch. */
  #countVerdict(verdict: number, names: Uint8Array, offset: number, now: number): void {
    const counters = this.counters;
    switch (verdict) {
      case Verdict.replayed:
      case Verdict.misdirected:
        counters[Counter.dropReplay]++;
        break;
      case Verdict.own:
        counters[Counter.dropOwnEcho]++;
        break;
      case Verdict.unproven:
        counters[Counter.dropUnproven]++;
        break;
      case Verdict.control:
      case Verdict.piece:
        break;
      case Verdict.incomplete:
        counters[Counter.dropIncomplete]++;
        break;
      case Verdict.unknownKey:
        counters[Counter.dropAuthFailed]++;
        this.#mismatch.note(Mismatch.unknownKey, names, offset, now);
        break;
      default:
        counters[Counter.dropAuthFailed]++;
        this.#mismatch.note(Mismatch.forged, names, offset, now);
    }
  }

  /** Sends the hellos, proofs and key announcements the sealer has queued. */
  #sendOutgoing(): void {
    for (const { datagram, to } of this.#sealer!.takeOutgoing()) {
      sendTo(
        this.#unicastFd,
        datagram,
        datagram.length,
        to ? new SocketAddress(to) : this.#groupTarget,
      );
    }
  }

  /**
   * Re-reads the `key=` source: a new secret is taken for opening at once and
   * for sealing once the members have it (see plugs/seal.ts). Returns what
   * happened, in words.
   */
  reload(): string {
    if (!this.#sealer || this.config.key === undefined) return "no key= to reload";
    const secret = loadKey(this.config.key);
    let result: string;
    try {
      result = this.#sealer.reload(secret, Date.now() / 1000);
    } finally {
      secret.fill(0);
    }
    this.#sendOutgoing();
    log("info", `${this.vnl}: key reloaded: ${result}`);
    return result;
  }

  send(batch: FrameBatch): void {
    const vector = this.#vectors.of(batch);
    const bytes = batch.bytes;
    const counters = this.counters;
    const now = this.#seconds(batch, true);
    this.table.setClock(now);
    const words = batch.words;
    const prefix = this.#prefix;
    const sealer = this.#sealer;
    const planner = this.#planner;
    planner.start(vector, vector.segmentationRefused ? 0 : this.largestWholeFrame ?? 0);
    if (sealer) {
      batch.joinSplitFrames(); // sealing takes each frame whole in its slot
      sealer.startBatch(now);
    }
    const split = batch.splitFrames;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      if (length < ETH_HEADER) {
        counters[Counter.dropTooShort]++;
        continue;
      }
      const frameOffset = i * SLOT_SIZE + HEADROOM;
      const headerWord = (frameOffset - prefix) >>> 2;
      words[headerWord] = this.#headerHigh;
      words[headerWord + 1] = this.#headerLow;
      const slot = this.table.lookup(bytes, frameOffset);
      if (sealer !== undefined && length > sealer.pieceLimit) {
        this.#sendPieces(batch, vector, i, length, slot);
        continue;
      }
      // A split frame's datagram: the encapsulation and the frame's head, then its rest.
      const head = split === 0 || batch.heads[i] === 0 ? 0 : batch.heads[i] + prefix;
      const restAt = head === 0 ? 0 : batch.rests[i];
      if (
        sealer &&
        !(slot < 0
          ? sealer.sealFrame(batch, i, length)
          : sealer.sealFrame(batch, i, length, this.table.addresses, slot * SOCKADDR_SIZE))
      ) {
        counters[Counter.dropSendError]++;
        continue;
      }
      if (planner.datagrams === vector.capacity) this.#sendPlanned(vector); // after pieces
      const datagram = length + prefix;
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
    sendPlanned(this.vnl, this.#unicastFd, vector, planner, counters, this.#mesh);
    // A key change announces itself while frames are sealed.
    if (sealer?.hasOutgoing) this.#sendOutgoing();
  }

  /** Sends what the planner holds, which a send's datagrams outgrew, and starts it again. */
  #sendPlanned(vector: DatagramVector): void {
    const planner = this.#planner;
    sendPlanned(this.vnl, this.#unicastFd, vector, planner, this.counters, this.#mesh);
    planner.start(vector, vector.segmentationRefused ? 0 : this.largestWholeFrame ?? 0);
  }

  /**
   * Sends frame i of `batch`, too long for one sealed datagram, as the
   * datagrams of its pieces (see {@linkcode Sealer.sealPieces}), to the peer
   * of `slot` in the table or, when it is -1, to the group.
   */
  #sendPieces(batch: FrameBatch, vector: DatagramVector, i: number, length: number, slot: number) {
    const sealer = this.#sealer!, planner = this.#planner, counters = this.counters;
    const sealed = slot < 0
      ? sealer.sealPieces(batch, i, length)
      : sealer.sealPieces(batch, i, length, this.table.addresses, slot * SOCKADDR_SIZE);
    if (!sealed) {
      counters[Counter.dropSendError]++;
      return;
    }
    const pieces = sealer.pieces, stride = sealer.pieceStride;
    if (pieces > vector.capacity) {
      counters[Counter.dropSendError]++; // a jumbo frame's pieces outnumber a small batch
      return;
    }
    if (planner.datagrams + pieces > vector.capacity) this.#sendPlanned(vector);
    for (let k = 0; k < pieces; k++) {
      const datagram = sealer.pieceDatagram(k);
      if (slot < 0) {
        this.#mesh?.noteFlood(planner.single(i, datagram, 0, 0, k * stride), datagram, k > 0);
      } else {
        const piece = datagram - SEALED_PREFIX;
        planner.toPeer(i, datagram, slot * SOCKADDR_SIZE, piece, 0, 0, k * stride);
      }
    }
    counters[slot < 0 ? Counter.sentMulticast : Counter.sentUnicast]++;
    counters[Counter.framesCut]++;
    counters[Counter.framesOut]++;
    counters[Counter.bytesOut] += length;
  }

  /**
   * Runs receive and send on synthetic frames through loopback sockets of
   * its own in place of the plug's (see {@linkcode startWarmUp}): a peer
   * sends it datagrams (a broadcast, a ping) and receives what the plug
   * sends back, to the MAC it learned and to the "group" (the peer's
   * address), and with `peers=` its copies of floods. Not where the
   * loopback is down.
   */
  warmUp(batch: FrameBatch): WarmUpResult {
    const state = this.startWarmUp(batch);
    if (!state) return { framesIn: 0, framesOut: 0 };
    // Both sockets in turn, and now and then both at once.
    return warmNetworkPlug(this, state, batch, (round) => (round % 3) + 1);
  }

  /**
   * Puts loopback sockets of its own in place of the plug's, and a scratch
   * MAC table and counters in place of its own: one socket stands for the
   * group's, one for the plug's unicast socket, and a third for a peer that
   * is also the "group" the plug sends to. Each round the peer sends a
   * broadcast to the group's stand-in and a ping to the unicast one, now and
   * then says goodbye or passes for this plug's own echo; and the unicast
   * socket sends itself a frame from {@linkcode WARM_LOOP_MAC}, so that what
   * goes to that MAC comes back as runs of datagrams. On a keyed network
   * the plug and the peer seal with a key made up for the warm-up and prove
   * each other first (hellos and proofs), as members do; the plug's own
   * sealer, its keys and proven members, is set aside meanwhile. With
   * `peers=`, the copies of floods for the members go to the peer too. Undefined
   * where the loopback is down.
   */
  startWarmUp(batch: FrameBatch): WarmUpState | undefined {
    const saved = {
      counters: this.counters,
      table: this.table,
      multicastFd: this.#multicastFd,
      unicastFd: this.#unicastFd,
      unicastPort: this.#unicastPort,
      sealer: this.#sealer,
    };
    const timeMs = batch.timeMs;
    const sockets = loopbackSockets(3);
    if (!sockets) return undefined;
    const { fds } = sockets;
    const [groupFd, own, peerFd] = fds;
    const [groupStandIn, ownAddress, peerAddress] = sockets.addresses;
    // On a keyed network, the plug and its peer seal with a key of their own, made up for the
    // warm-up, and prove each other as members do.
    let sealer: Sealer | undefined, peerSealer: Sealer | undefined;
    try {
      enableReceiveRuns(own);
      if (saved.sealer) {
        const secret = randomBytes(new Uint8Array(KEY_SIZE));
        const place = { vni: this.config.vni, group: this.config.group.bytes };
        try {
          sealer = new Sealer(secret, place);
          peerSealer = new Sealer(secret, place);
        } finally {
          secret.fill(0);
        }
        sealer.setLocalPort(ownAddress.port);
        peerSealer.setLocalPort(peerAddress.port);
        const limit = saved.sealer.pieceLimit;
        if (limit < MAX_FRAME) {
          sealer.setPieceLimit(limit);
          peerSealer.setPieceLimit(limit);
        }
        // Shaped as the plug's own sealer, which has one (V8 compiles for the shape it saw).
        sealer.onEvent = peerSealer.onEvent = () => {};
      }
    } catch {
      for (const fd of fds) closeQuietly(fd);
      sealer?.close();
      peerSealer?.close();
      return undefined;
    }
    const scratch = newCounters();
    const peerWords = new Uint32Array(peerAddress.bytes.buffer);
    const table = new MacTable(1024, this.config.expireSeconds, scratch, `${this.vnl} warm-up`);
    this.counters = scratch;
    this.table = table;
    this.#multicastFd = groupFd;
    this.#unicastFd = own;
    this.#sealer = sealer;
    this.#groupTarget = peerAddress;
    this.#aimPlanner();
    const giveMembersBack = this.#mesh?.copyFloodsOnlyTo(peerAddress);
    // The peer's datagrams are made, and what it receives is opened, in slots of its own batch.
    const prefix = this.#prefix;
    const { batch: peerBatch, view: peerView, at, vector: peerVector } = new WarmUpPeer(prefix);
    const source: DatagramSource = { names: peerVector.names, offset: 0, fromGroup: false };
    const ownTag = destinationTag(ownAddress.bytes, 0);
    const fromPeer = (length: number, to: SocketAddress, tag: number) => {
      peerBatch.bytes.set(this.#header, at - prefix);
      if (peerSealer && !peerSealer.seal(peerBatch, 0, length, batch.timeMs / 1000, tag)) return;
      sendTo(peerFd, peerBatch.bytes.subarray(at - prefix), prefix + length, to);
    };
    if (sealer) {
      sealer.greet(batch.timeMs / 1000);
      this.#sendOutgoing();
    }
    return {
      fds: [groupFd, own],
      feed: (round) => {
        const peer = WARM_PEER_MACS[round % 2];
        let length = round % 2 === 0
          ? arpFrame(peerView, at, peer)
          : routerSolicitation(peerView, at, peer);
        fromPeer(length, groupStandIn, peerSealer?.groupTag ?? 0);
        length = pingFrame(peerView, at, WARM_LOCAL_MAC, peer);
        fromPeer(length, ownAddress, ownTag);
        if (peerSealer && peerSealer.pieceLimit < MAX_FRAME && round % 2 === 1) {
          // A frame longer than the route carries, in pieces, for the plug to join.
          length = tcpFrame(peerView, at, WARM_LOCAL_MAC, peer, peerSealer.pieceLimit + 100 - 54);
          peerBatch.bytes.set(this.#header, at - prefix);
          if (peerSealer.sealPieces(peerBatch, 0, length, ownAddress.bytes, 0)) {
            for (let k = 0; k < peerSealer.pieces; k++) {
              const from = at - prefix + k * peerSealer.pieceStride;
              const datagram = peerSealer.pieceDatagram(k);
              sendTo(peerFd, peerBatch.bytes.subarray(from), datagram, ownAddress);
            }
          }
        }
        if (round % 8 === 2) {
          // From the plug's own socket to itself: its table learns WARM_LOOP_MAC there.
          length = arpFrame(peerView, at, WARM_LOOP_MAC);
          peerBatch.bytes.set(this.#header, at - prefix);
          if (!sealer || sealer.seal(peerBatch, 0, length, batch.timeMs / 1000, ownTag)) {
            sendTo(own, peerBatch.bytes.subarray(at - prefix), prefix + length, ownAddress);
          }
        }
        if (round % 8 === 0) batch.timeMs += 1000;
        // Now and then the peer says goodbye, so that its MACs are learned anew, or its datagrams
        // pass for this plug's own echo from the group.
        if (round % 16 === 15) table.forget(peerWords, 0);
        if (round % 4 === 0) this.#unicastPort = peerAddress.port;
      },
      drain: () => {
        this.#unicastPort = saved.unicastPort;
        const now = batch.timeMs / 1000;
        for (;;) {
          const received = peerVector.receiveInto(
            peerFd,
            0,
            peerBatch.capacity,
            prefix + MAX_FRAME,
          );
          if (received <= 0 || !peerSealer) break;
          for (let i = 0; i < received; i++) {
            const length = peerVector.length(i) - prefix;
            if (length < 0 || length > MAX_FRAME || peerVector.truncated(i)) continue;
            source.offset = i * SOCKADDR_SIZE;
            peerSealer.open(peerBatch, i, length, now, source);
          }
          for (const { datagram, to } of peerSealer.takeOutgoing()) {
            sendTo(peerFd, datagram, datagram.length, to ? new SocketAddress(to) : groupStandIn);
          }
        }
      },
      end: () => {
        this.counters = saved.counters;
        this.table = saved.table;
        this.#multicastFd = saved.multicastFd;
        this.#unicastFd = saved.unicastFd;
        this.#unicastPort = saved.unicastPort;
        this.#sealer = saved.sealer;
        this.#groupTarget = this.config.group;
        this.#aimPlanner();
        giveMembersBack?.();
        batch.timeMs = timeMs;
        batch.count = 0;
        // Datagrams of a synthetic run must never follow the network's own.
        this.#lastVector?.discardRuns();
        for (const fd of fds) closeQuietly(fd);
        sealer?.close();
        peerSealer?.close();
        return {
          framesIn: scratch[Counter.framesIn],
          framesOut: scratch[Counter.framesOut],
          framesCut: scratch[Counter.framesCut],
        };
      },
    };
  }

  describe(): Record<string, unknown> {
    return {
      group: this.config.group.toString(),
      vni: this.config.vni,
      sealed: this.#sealer !== undefined,
      ...(this.#sealer ? this.#describeKeys(this.#sealer) : {}),
      unicastPort: this.#unicastPort,
      ...describeTable(this.table, this.config.expireSeconds, this.#mesh),
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sayGoodbye();
    this.#mesh?.close();
    closeQuietly(this.#unicastFd);
    closeQuietly(this.#multicastFd);
    this.#sealer?.close();
  }

  /** Sends the bare header (sealed, on a keyed network) that makes peers forget us. */
  #sayGoodbye(): void {
    this.#sendControl(this.#header, undefined, 0, this.config.group);
  }

  /**
   * Sends `header` and `length` bytes of `body` (none for a goodbye), sealed
   * on a keyed network, to `to` or the group.
   */
  #sendControl(
    header: Uint8Array,
    body: Uint8Array | undefined,
    length: number,
    to: SocketAddress = this.config.group,
  ): void {
    const batch = this.#controlBatch ??= new FrameBatch(1);
    const start = HEADROOM - this.#prefix;
    batch.bytes.set(header, start);
    if (body) batch.bytes.set(body.subarray(0, length), HEADROOM);
    const sealer = this.#sealer;
    if (sealer) {
      const tag = to === this.config.group ? sealer.groupTag : destinationTag(to.bytes, 0);
      if (!sealer.seal(batch, 0, length, Date.now() / 1000, tag)) return;
    }
    sendTo(this.#unicastFd, batch.bytes.subarray(start), this.#prefix + length, to);
  }

  /**
   * A hello from a `peers=` member in slot i: opened on a keyed network, our
   * own echo dropped, the rest handed to the member list.
   */
  #receiveHello(
    batch: FrameBatch,
    vector: DatagramVector,
    i: number,
    length: number,
    fromGroup: boolean,
    now: number,
  ): void {
    const counters = this.counters;
    if (length < 0 || length > MAX_FRAME || vector.truncated(i)) {
      counters[Counter.dropMalformed]++;
      return;
    }
    if (this.#sealer) {
      const source = this.#source;
      source.names = vector.names;
      source.offset = i * SOCKADDR_SIZE;
      source.fromGroup = fromGroup;
      const verdict = this.#sealer.open(batch, i, length, now, source);
      if (verdict !== Verdict.ok) {
        this.#countVerdict(verdict, vector.names, i * SOCKADDR_SIZE, now);
        return;
      }
    }
    const name = vector.names.subarray(i * SOCKADDR_SIZE, (i + 1) * SOCKADDR_SIZE);
    const body = batch.bytes.subarray(batch.offset(i), batch.offset(i) + length);
    if (!this.#mesh!.receiveHello(name, body, fromGroup)) counters[Counter.dropMalformed]++;
  }

  #describeKeys(sealer: Sealer): Record<string, unknown> {
    const hex = (id?: number) => id === undefined ? undefined : id.toString(16).padStart(6, "0");
    const { current, next, previous } = sealer.keys;
    return {
      keyId: hex(current),
      ...(next === undefined ? {} : { nextKeyId: hex(next) }),
      ...(previous === undefined ? {} : { previousKeyId: hex(previous) }),
      provenSenders: sealer.knownSenders,
    };
  }

  /** Whether the header at `word` is that of an open (unkeyed) network on our VNI. */
  #isPlaintext(words: Uint32Array, word: number): boolean {
    return words[word] === this.#plainHigh && words[word + 1] === this.#headerLow;
  }

  /** Whether the header at `word` is that of a keyed network on our VNI (we are open). */
  #isSealed(words: Uint32Array, word: number): boolean {
    return words[word] === this.#sealedHigh && words[word + 1] === this.#headerLow;
  }
}

/** Kinds of datagrams that say another plug on the group holds another key, or none. */
const Mismatch = { forged: 0, plaintext: 1, sealed: 2, unknownKey: 3 } as const;

/** Seconds between two warnings of one kind. */
export const MISMATCH_WARNING_SECONDS = 10;

/**
 * Warns, at most once per {@linkcode MISMATCH_WARNING_SECONDS} per kind, that
 * datagrams on the group were dropped because their sender has another key or
 * none: a mismatch is otherwise only a counter in `vdeno status`.
 */
class MismatchWarnings {
  readonly #vnl: string;
  readonly #lastWarned = [-Infinity, -Infinity, -Infinity, -Infinity];
  readonly #since = [0, 0, 0, 0];

  constructor(vnl: string) {
    this.#vnl = vnl;
  }

  note(kind: number, names: Uint8Array, offset: number, now: number): void {
    this.#since[kind]++;
    if (now - this.#lastWarned[kind] < MISMATCH_WARNING_SECONDS) return;
    const from = formatSocketAddress(names, offset);
    const count = this.#since[kind];
    const dropped = count === 1 ? "dropped" : `${count} dropped since the last warning`;
    const what = kind === Mismatch.forged
      ? `sealed datagrams from ${from} fail authentication: a plug with another key ` +
        `is on this group and VNI, or someone forges datagrams (${dropped})`
      : kind === Mismatch.unknownKey
      ? `sealed datagrams from ${from} carry a key id this plug does not hold: a plug with ` +
        `another key is on this group and VNI, or a key change is under way (${dropped})`
      : kind === Mismatch.plaintext
      ? `open datagrams from ${from}: a plug without a key is on this group and VNI (${dropped})`
      : `sealed datagrams from ${from}: a keyed plug is on this group and VNI; give this plug ` +
        `its key= to join it (${dropped})`;
    log("warn", `${this.#vnl}: ${what}`);
    this.#lastWarned[kind] = now;
    this.#since[kind] = 0;
  }
}
