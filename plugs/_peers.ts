/**
 * `peers=`: members of an overlay network (vxvde, vxlan) reached by unicast,
 * for underlays that carry no multicast (cloud VPCs, routed subnets, Wi-Fi).
 *
 * A plug with `peers=` keeps a list of members: the seeds it was given, and
 * the members other members told it about. Every frame it sends to the group
 * (broadcast, multicast, unknown MAC) also goes by unicast to each member,
 * as the kernel's all-zeros flood entries do; learning and unicast to known
 * MACs stay as they are.
 *
 * Members find each other with hellos: a small datagram, sent to the group
 * and to every member every quarter of the timeout, that lists up to
 * {@linkcode MAX_TOLD} members the sender has heard from, picked at random.
 * So one seed is enough: hosts that list only h1 hear of each other from h1
 * and then talk directly. A member heard for the first time gets a hello at
 * once, so a new or restarted member is found within a round trip, not a
 * hello interval. A member that says goodbye is dropped at once (and not
 * taken back from others' hellos for a timeout, unless it speaks again); a
 * silent one after the timeout. Seeds are never dropped: a seed that comes
 * back is found again.
 *
 * A hello carries the network's header with byte 2 set to
 * {@linkcode HELLO_MARK}: vdeplug4, which compares all 8 header bytes, and
 * the kernel's VXLAN device, which refuses reserved bits, drop it. On a keyed
 * network the plug seals hellos like frames, so a host without the key
 * learns nothing, not even who the members are.
 *
 * Where multicast works, members that hear each other through the group say
 * so: each listed member carries a flag "I hear it through the group". A
 * member that says it hears us through the group gets no unicast copy of
 * floods (nobody sees a frame twice) and no unicast hellos while we hear it
 * there too. Multicast that works one way only (IGMP snooping that lost a
 * port) is caught within a timeout: the member stops hearing our group
 * hellos, writes to us by unicast again, and says so.
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  bindSocket,
  type DatagramVector,
  localAddress,
  localAddressKeys,
  numericAddress,
  resolveHost,
  routeSource,
  SOCKADDR_SIZE,
  SocketAddress,
} from "../ffi/net.ts";
import { Errno, SystemError } from "../ffi/libc.ts";
import { Ticker } from "../ffi/poll.ts";
import { Counter } from "../core/counters.ts";
import { VnlError } from "../core/vnl.ts";

/** Header byte 2 of a hello: reserved (zero) in vxvde and VXLAN frames. */
export const HELLO_MARK = 0x48;
/** Members one hello lists at most. */
export const MAX_TOLD = 20;
/** Members a plug keeps at most (seeds included). */
export const MAX_MEMBERS = 1024;
/** Default seconds after which a silent member is dropped; hellos go every quarter of it. */
export const DEFAULT_PEER_TIMEOUT = 60;
const HELLO_VERSION = 1;
const HELLO_FIXED = 6;
/** Largest hello body: the fixed part and MAX_TOLD IPv6 entries. */
export const MAX_HELLO = HELLO_FIXED + MAX_TOLD * 19;
/** Hellos sent at once (to new members) per second at most; the rest wait for the next round. */
const PROMPT_HELLOS_PER_SECOND = 32;

/** A member named in a hello, and whether the sender hears it through the group. */
export interface ToldMember {
  address: SocketAddress;
  throughGroup: boolean;
}

/** A hello: who sends it (a random id per plug) and members the sender has heard from. */
export interface Hello {
  instance: number;
  members: ToldMember[];
  /**
   * Sent to the group: where it arrives it came through the group, which a
   * plug with one socket for both (vxlan) cannot tell otherwise.
   */
  toGroup?: boolean;
}

/** Flag on the count byte: the hello was sent to the group. */
const TO_GROUP = 0x80;

/** Flag on a member's family byte: the sender hears that member through the group. */
const THROUGH_GROUP = 0x80;

/** The header of a hello on a network whose frames carry `header`. */
export function helloHeader(header: Uint8Array): Uint8Array<ArrayBuffer> {
  const hello = header.slice();
  hello[2] = HELLO_MARK;
  return hello;
}

/**
 * Writes a hello body into `into` (at least {@linkcode MAX_HELLO} bytes):
 * version 1, the count (plus 0x80 when sent to the group), the sender's id
 * (32 bits), then per member its
 * family (4 or 6, plus 0x80 when heard through the group), port (16 bits)
 * and address. Returns its length.
 */
export function encodeHello(hello: Hello, into: Uint8Array): number {
  const members = hello.members.slice(0, MAX_TOLD);
  into[0] = HELLO_VERSION;
  into[1] = members.length | (hello.toGroup ? TO_GROUP : 0);
  new DataView(into.buffer, into.byteOffset).setUint32(2, hello.instance >>> 0);
  let at = HELLO_FIXED;
  for (const { address, throughGroup } of members) {
    const ip = address.ip;
    into[at] = (address.family === AF_INET ? 4 : 6) | (throughGroup ? THROUGH_GROUP : 0);
    into[at + 1] = address.port >> 8;
    into[at + 2] = address.port & 0xff;
    into.set(ip, at + 3);
    at += 3 + ip.length;
  }
  return at;
}

/** Reads a hello body; undefined when it is malformed (or of another version). */
export function decodeHello(bytes: Uint8Array): Hello | undefined {
  if (bytes.length < HELLO_FIXED || bytes[0] !== HELLO_VERSION) return undefined;
  const count = bytes[1] & ~TO_GROUP;
  if (count > MAX_TOLD) return undefined;
  const instance = new DataView(bytes.buffer, bytes.byteOffset).getUint32(2);
  const members: ToldMember[] = [];
  let at = HELLO_FIXED;
  for (let i = 0; i < count; i++) {
    const family = bytes[at] & ~THROUGH_GROUP;
    const size = family === 4 ? 4 : family === 6 ? 16 : 0;
    if (size === 0 || at + 3 + size > bytes.length) return undefined;
    const port = (bytes[at + 1] << 8) | bytes[at + 2];
    if (port === 0) return undefined;
    const address = SocketAddress.any(size === 4 ? AF_INET : AF_INET6).withPort(port);
    address.ip.set(bytes.subarray(at + 3, at + 3 + size));
    members.push({ address, throughGroup: (bytes[at] & THROUGH_GROUP) !== 0 });
    at += 3 + size;
  }
  const toGroup = (bytes[1] & TO_GROUP) !== 0;
  return at === bytes.length ? { instance, members, toGroup } : undefined;
}

/**
 * Parses `peers=`: addresses separated by commas, each IPv4 (`10.0.0.1`,
 * `10.0.0.1:4000`), IPv6 (`fd00::1`, `[fd00::1]:4000`) or a host name
 * (`h1`, `h1:4000`), resolved now with `resolve`. An address without a port
 * has the network's `port`; all must be of `family`.
 */
export function parsePeers(
  text: string,
  port: number,
  family: number,
  resolve: (name: string, port: number, family: number) => SocketAddress[] = resolveHost,
): SocketAddress[] {
  const peers: SocketAddress[] = [];
  for (const item of text.split(",").map((entry) => entry.trim())) {
    if (item === "") continue;
    let host = item, itemPort = port;
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(item);
    const withPort = /^([^:]+):(\d+)$/.exec(item);
    if (bracketed) [host, itemPort] = [bracketed[1], bracketed[2] ? Number(bracketed[2]) : port];
    else if (withPort) [host, itemPort] = [withPort[1], Number(withPort[2])];
    if (!(itemPort >= 1 && itemPort <= 65535)) {
      throw new VnlError(`Bad peers: ${item} has no valid port (1 to 65535)`);
    }
    const numeric = SocketAddress.parse(host, itemPort);
    if (numeric) {
      if (numeric.family !== family) {
        const [is, network] = numeric.family === AF_INET ? ["IPv4", "IPv6"] : ["IPv6", "IPv4"];
        throw new VnlError(
          `Bad peers: ${item} is ${is} but the network is ${network}; give addresses of one family (v4 or v6)`,
        );
      }
      peers.push(numeric);
      continue;
    }
    if (!/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) {
      throw new VnlError(
        `Bad peers: ${item} is neither an address nor a host name; expected e.g. 10.0.0.1, [fd00::1]:14789 or h1`,
      );
    }
    const found = resolve(host, itemPort, family);
    if (found.length === 0) {
      throw new VnlError(
        `Bad peers: cannot resolve ${host} to an ${family === AF_INET ? "IPv4" : "IPv6"} address`,
      );
    }
    peers.push(found[0]);
  }
  if (peers.length === 0) throw new VnlError("Bad peers: peers= needs at least one address");
  return peers;
}

/** The family `peers=` implies when the VNL names none: that of its first numeric address. */
export function peersFamily(text: string): number | undefined {
  const first = text.split(",")[0].trim();
  if (first.startsWith("[") || (first.match(/:/g) ?? []).length > 1) return AF_INET6;
  return undefined;
}

/** How a member became known. */
export type MemberSource = "seed" | "hello" | "group";

/** A member as `vdeno status` shows it. */
export interface MemberView {
  address: string;
  source: MemberSource;
  /** Seconds since its last hello, or null when it has not spoken yet. */
  lastHeardSeconds: number | null;
  /** Whether it says it hears us through the group: floods then skip its unicast copy. */
  viaGroup: boolean;
  /** Whether we hear its hellos through the group. */
  heardThroughGroup: boolean;
}

interface Member {
  address: SocketAddress;
  source: MemberSource;
  addedAt: number;
  heardAt: number;
  /** When we last heard its hello through the group. */
  groupAt: number;
  /** Whether its last word on it was that it hears us through the group. */
  hearsUs: boolean;
  /** When we last answered one of its hellos out of turn. */
  answeredAt: number;
}

/**
 * The member list, with no sockets: who is known, since when, who hears us
 * through the group, and the packed addresses floods are copied to. Times
 * are seconds.
 */
export class Members {
  readonly timeoutSeconds: number;
  /** The sockaddrs floods go to by unicast, packed from 0: {@linkcode targetCount} of them. */
  readonly targets: Uint8Array<ArrayBuffer> = new Uint8Array(MAX_MEMBERS * SOCKADDR_SIZE);
  targetCount = 0;
  readonly #members = new Map<string, Member>();
  /** Our own addresses as others see them: the listener, and any that echoed our id. */
  readonly #self = new Set<string>();
  /** Members that said goodbye, with the time: not taken back from hellos until the timeout. */
  readonly #gone = new Map<string, number>();
  readonly #family: number;

  constructor(
    seeds: readonly SocketAddress[],
    self: SocketAddress | undefined,
    timeoutSeconds: number,
    now: number,
  ) {
    this.timeoutSeconds = timeoutSeconds;
    this.#family = seeds[0]?.family ?? self?.family ?? AF_INET;
    if (self) this.#self.add(self.toString());
    for (const seed of seeds) {
      const key = seed.toString();
      if (this.#self.has(key) || this.#members.has(key)) continue;
      this.#members.set(key, {
        address: seed,
        source: "seed",
        addedAt: now,
        heardAt: 0,
        groupAt: 0,
        hearsUs: false,
        answeredAt: 0,
      });
    }
    this.#pack();
  }

  /** How many members are known. */
  get size(): number {
    return this.#members.size;
  }

  /** Whether `address` is a member. */
  has(address: SocketAddress): boolean {
    return this.#members.has(address.toString());
  }

  /** Marks `address` as one of ours (a hello with our own id came from it). */
  isSelf(address: SocketAddress): void {
    const key = address.toString();
    this.#self.add(key);
    if (this.#members.delete(key)) this.#pack();
  }

  /** Records a hello from `address`; returns true when the member is new (or newly heard). */
  heard(address: SocketAddress, viaGroup: boolean, now: number): boolean {
    const key = address.toString();
    if (this.#self.has(key)) return false;
    this.#gone.delete(key);
    let member = this.#members.get(key);
    const fresh = member === undefined || member.heardAt === 0;
    if (member === undefined) {
      if (!this.#makeRoom()) return false;
      member = {
        address,
        source: viaGroup ? "group" : "hello",
        addedAt: now,
        heardAt: 0,
        groupAt: 0,
        hearsUs: false,
        answeredAt: 0,
      };
      this.#members.set(key, member);
    }
    member.heardAt = now;
    if (viaGroup) member.groupAt = now;
    if (fresh) this.#pack();
    return fresh;
  }

  /** Whether `address` is ours as others see it (our listener, or an echo of our own hello). */
  isOwn(address: SocketAddress): boolean {
    return this.#self.has(address.toString());
  }

  /**
   * Whether to answer a hello from the member at `address` out of turn: once
   * per quarter of the timeout at most, so that two members never keep
   * answering each other.
   */
  mayAnswer(address: SocketAddress, now: number): boolean {
    const member = this.#members.get(address.toString());
    if (member === undefined || member.answeredAt > now - this.timeoutSeconds / 4) return false;
    member.answeredAt = now;
    return true;
  }

  /** The member at `address` says whether it hears us through the group. */
  hearsUs(address: SocketAddress, hearsUs: boolean): void {
    const member = this.#members.get(address.toString());
    if (member === undefined || member.hearsUs === hearsUs) return;
    member.hearsUs = hearsUs;
    this.#pack();
  }

  /** Adds the members a hello named that are new to us; returns those added. */
  told(addresses: readonly SocketAddress[], now: number): SocketAddress[] {
    const added: SocketAddress[] = [];
    for (const address of addresses) {
      const key = address.toString();
      if (!this.#usable(address) || this.#self.has(key) || this.#members.has(key)) continue;
      const goneAt = this.#gone.get(key);
      if (goneAt !== undefined && goneAt >= now - this.timeoutSeconds) continue;
      if (!this.#makeRoom()) break;
      this.#members.set(key, {
        address,
        source: "hello",
        addedAt: now,
        heardAt: 0,
        groupAt: 0,
        hearsUs: false,
        answeredAt: 0,
      });
      added.push(address);
    }
    if (added.length > 0) this.#pack();
    return added;
  }

  /** A member said goodbye: drops it (a seed stays, as never heard). Returns whether it was known. */
  goodbye(address: SocketAddress, now: number): boolean {
    const key = address.toString();
    const member = this.#members.get(key);
    if (member === undefined) return false;
    this.#gone.set(key, now);
    if (member.source === "seed") {
      member.heardAt = 0;
      member.groupAt = 0;
      member.hearsUs = false;
    } else this.#members.delete(key);
    this.#pack();
    return true;
  }

  /**
   * Drops members not heard within the timeout (never-heard ones a timeout
   * after they were named); seeds stay, as not heard. Returns the members
   * that were heard before and fell silent, whose MACs are stale now.
   */
  expire(now: number): SocketAddress[] {
    const silent: SocketAddress[] = [];
    const limit = now - this.timeoutSeconds;
    for (const [key, member] of this.#members) {
      if (member.heardAt !== 0 ? member.heardAt >= limit : member.addedAt >= limit) continue;
      const wasHeard = member.heardAt !== 0;
      if (member.source === "seed") {
        if (!wasHeard) continue;
        member.heardAt = 0;
        member.groupAt = 0;
        member.hearsUs = false;
        member.addedAt = now;
      } else this.#members.delete(key);
      if (wasHeard) silent.push(member.address);
    }
    for (const [key, at] of this.#gone) if (at < limit) this.#gone.delete(key);
    this.#pack();
    return silent;
  }

  /**
   * What a hello lists: up to `max` members heard within the timeout, picked
   * at random, each with whether we hear it through the group; a hello to one
   * member (`to`) names that member first, so that it learns whether we hear
   * it there.
   */
  sample(now: number, max = MAX_TOLD, to?: SocketAddress): ToldMember[] {
    const first = to === undefined ? undefined : this.#members.get(to.toString());
    const heard = [...this.#members.values()].filter((member) =>
      member !== first && member.heardAt !== 0 && member.heardAt >= now - this.timeoutSeconds
    );
    for (let i = heard.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [heard[i], heard[j]] = [heard[j], heard[i]];
    }
    if (first) heard.unshift(first);
    return heard.slice(0, max).map((member) => ({
      address: member.address,
      throughGroup: this.#heardThroughGroup(member, now),
    }));
  }

  /**
   * The members to greet by unicast: all but those that hear us through the
   * group while we hear them there (the group's hellos then carry all news).
   */
  unicastMembers(now: number): SocketAddress[] {
    return [...this.#members.values()]
      .filter((member) => !(member.hearsUs && this.#heardThroughGroup(member, now)))
      .map((member) => member.address);
  }

  /**
   * Members that have not spoken since they were added or fell silent, for
   * up to a timeout: they get hellos often. (A seed that never speaks, such
   * as a kernel VXLAN device, is then greeted only with the others.)
   */
  unheard(now: number): SocketAddress[] {
    return [...this.#members.values()]
      .filter((member) => member.heardAt === 0 && member.addedAt >= now - this.timeoutSeconds)
      .map((member) => member.address);
  }

  /** The members, for display. */
  view(now: number): MemberView[] {
    return [...this.#members.values()].map((member) => ({
      address: member.address.toString(),
      source: member.source,
      lastHeardSeconds: member.heardAt === 0 ? null : Math.round((now - member.heardAt) * 10) / 10,
      viaGroup: member.hearsUs,
      heardThroughGroup: this.#heardThroughGroup(member, now),
    }));
  }

  /** Whether the member at `address` was heard through the group within the timeout. */
  hearsThroughGroup(address: SocketAddress, now: number): boolean {
    const member = this.#members.get(address.toString());
    return member !== undefined && this.#heardThroughGroup(member, now);
  }

  #heardThroughGroup(member: Member, now: number): boolean {
    return member.groupAt !== 0 && member.groupAt >= now - this.timeoutSeconds;
  }

  /** Whether a told address can be a member: a unicast address of our family with a port. */
  #usable(address: SocketAddress): boolean {
    if (address.family !== this.#family || address.port === 0) return false;
    const ip = address.ip;
    if (ip.every((byte) => byte === 0)) return false;
    return address.family === AF_INET ? (ip[0] & 0xf0) !== 0xe0 : ip[0] !== 0xff;
  }

  /** Makes room for one more member, dropping a never-heard one if full; false if none can go. */
  #makeRoom(): boolean {
    if (this.#members.size < MAX_MEMBERS) return true;
    for (const [key, member] of this.#members) {
      if (member.heardAt === 0 && member.source !== "seed") {
        this.#members.delete(key);
        return true;
      }
    }
    return false;
  }

  #pack(): void {
    let count = 0;
    for (const member of this.#members.values()) {
      if (member.hearsUs) continue;
      this.targets.set(member.address.bytes, count++ * SOCKADDR_SIZE);
    }
    this.targetCount = count;
  }
}

/** What a plug does for its {@linkcode PeerMesh}: send hellos and goodbyes, forget MACs. */
export interface MeshLink {
  /** Sends a hello with this body to `to`, or to the group when undefined. */
  sendHello(body: Uint8Array<ArrayBuffer>, length: number, to?: SocketAddress): void;
  /** Sends the plug's goodbye to `to` by unicast. */
  sendGoodbye(to: SocketAddress): void;
  /** Forgets every MAC learned from `address`. */
  forgetMacs(address: SocketAddress): void;
}

/** Where a plug with `peers=` listens, as {@linkcode bindMember} found. */
export interface Listener {
  /** The address:port bound: a listener others can name in `peers=`, or an ephemeral port. */
  address: SocketAddress;
  /** Whether it is on the network's port (a seed for others) rather than an ephemeral one. */
  listening: boolean;
  /** The address:port it wanted, when another plug had it already. */
  taken?: SocketAddress;
}

/**
 * Binds the unicast socket of a plug with `peers=` to the network's `port`
 * on the local address `bind` (or, without it, the one this host sends from
 * to the first peer): others name it in their `peers=`. A specific address,
 * not the wildcard, so that it neither takes the group's datagrams nor
 * clashes with the group's sockets on the same port; one such listener per
 * address and port, so a second plug on the host gets an ephemeral port,
 * still finds every member through the seeds, but cannot be a seed itself.
 */
export function bindMember(
  fd: number,
  family: number,
  port: number,
  bind: SocketAddress | undefined,
  peers: readonly SocketAddress[],
): Listener {
  const local = bind ?? routeSource(peers[0]);
  if (local !== undefined) {
    try {
      bindSocket(fd, local.withPort(port));
      return { address: local.withPort(port), listening: true };
    } catch (error) {
      if (!(error instanceof SystemError) || error.code !== Errno.EADDRINUSE) throw error;
    }
  }
  bindSocket(fd, (local ?? SocketAddress.any(family)).withPort(0));
  return { address: localAddress(fd), listening: false, taken: local?.withPort(port) };
}

/** The pieces of a plug with `peers=`: the member list, the hello timer, flood copies. */
export class PeerMesh {
  readonly members: Members;
  /** Becomes readable when it is time for a round of hellos. */
  readonly timerFd: number;
  readonly listener: Listener;
  readonly instance: number = crypto.getRandomValues(new Uint32Array(1))[0];
  readonly #link: MeshLink;
  readonly #ticker: Ticker;
  readonly #body = new Uint8Array(MAX_HELLO);
  readonly #targetsAddress: number;
  readonly #nameLength: number;
  #floodDatagrams = new Int32Array(64);
  #floodLengths = new Int32Array(64);
  #floods = 0;
  /** Of those floods, how many start a frame (the others are later pieces of one). */
  #floodFrames = 0;
  /**
   * Seconds hold doubles from the start (-Infinity, not 0): a field that goes from a small
   * integer to a double changes the mesh's shape, and the data path's code, compiled for the
   * old one in the warm-up, is thrown away on the first live frames.
   */
  #promptSecond = -Infinity;
  /** Seconds between rounds of hellos to every member, and when the next one is due. */
  readonly #interval: number;
  #nextRound = -Infinity;
  #promptCount = 0;

  constructor(
    seeds: readonly SocketAddress[],
    listener: Listener,
    timeoutSeconds: number,
    link: MeshLink,
  ) {
    this.listener = listener;
    // A seed that is this very plug (h1 naming h1) is no member.
    const local = localAddressKeys();
    const others = seeds.filter((seed) =>
      seed.port !== listener.address.port || !local.has(`${seed.family}:${seed.ip.join(",")}`)
    );
    this.members = new Members(
      others,
      listener.address.ip.some((byte) => byte !== 0) ? listener.address : undefined,
      timeoutSeconds,
      Date.now() / 1000,
    );
    this.#link = link;
    this.#nameLength = listener.address.length;
    this.#targetsAddress = numericAddress(this.members.targets);
    this.#interval = Math.max(0.25, timeoutSeconds / 4);
    // The first round goes at once, so that a new member is known before its first frame; the
    // timer runs every second at most, for members that have not answered yet.
    this.#ticker = new Ticker(Math.min(1000, this.#interval * 1000), 0);
    this.timerFd = this.#ticker.fd;
  }

  /**
   * The timer fired: drops silent members; says hello to the group and every
   * member every quarter of the timeout, and to members that have not spoken
   * yet (a seed that was not up when we started) every second.
   */
  tick(): void {
    this.#ticker.acknowledge();
    const now = Date.now() / 1000;
    for (const silent of this.members.expire(now)) this.#link.forgetMacs(silent);
    if (now < this.#nextRound) {
      for (const member of this.members.unheard(now)) this.#prompt(member, now);
      return;
    }
    this.#nextRound = now + this.#interval - 0.05;
    this.#link.sendHello(this.#body, this.#hello(now));
    for (const member of this.members.unicastMembers(now)) {
      this.#link.sendHello(this.#body, this.#hello(now, member), member);
    }
  }

  /**
   * A hello arrived from the sender at `name` (sockaddr bytes) with `body`,
   * on the group's socket or not (a plug with one socket for both says not:
   * the hello says whether it was sent to the group). Returns false when it
   * is malformed.
   */
  receiveHello(name: Uint8Array, body: Uint8Array, fromGroup: boolean): boolean {
    // An empty hello is a goodbye, for networks whose own goodbye some members refuse (vxlan).
    if (body.length === 0) {
      this.#link.forgetMacs(new SocketAddress(name.slice(0, SOCKADDR_SIZE)));
      this.receiveGoodbye(name);
      return true;
    }
    const hello = decodeHello(body);
    if (hello === undefined) return false;
    const now = Date.now() / 1000;
    const sender = new SocketAddress(name.slice(0, SOCKADDR_SIZE));
    if (hello.instance === this.instance) {
      this.members.isSelf(sender);
      return true;
    }
    const viaGroup = fromGroup || hello.toGroup === true;
    const throughGroup = this.members.hearsThroughGroup(sender, now);
    const fresh = this.members.heard(sender, viaGroup, now);
    const added = this.members.told(hello.members.map((member) => member.address), now);
    const us = hello.members.find((member) => this.members.isOwn(member.address));
    if (us) this.members.hearsUs(sender, us.throughGroup);
    // Answered at once, so that a new member learns who is there, and those it was told of
    // hear from us, within a round trip rather than a hello interval.
    // One on the group too: where multicast works, the new member then hears us there and stops
    // copying floods to us by unicast. Likewise, at most once a round, for a member we hear
    // through the group that still writes to us by unicast: it has not heard from us that we
    // hear it there, or not heard our hellos on the group.
    if (!viaGroup && (fresh || (throughGroup && this.members.mayAnswer(sender, now)))) {
      this.#prompt(sender, now);
      this.#prompt(undefined, now);
    }
    // Heard through the group for the first time (in a timeout): news it can use at once, since
    // it copies floods to us until it hears that we hear it there.
    if (viaGroup && !throughGroup) this.#prompt(sender, now);
    for (const member of added) this.#prompt(member, now);
    return true;
  }

  /** A goodbye arrived from the sender at `name`: the member is dropped at once. */
  receiveGoodbye(name: Uint8Array): void {
    this.members.goodbye(new SocketAddress(name.slice(0, SOCKADDR_SIZE)), Date.now() / 1000);
  }

  /**
   * Notes that datagram `datagram` of the vector being sent, `length` bytes,
   * is a flood: a frame, or with `later` a later piece of the one before.
   */
  noteFlood(datagram: number, length: number, later = false): void {
    if (!later) this.#floodFrames++;
    if (this.#floods === this.#floodDatagrams.length) {
      const datagrams = new Int32Array(this.#floods * 2),
        lengths = new Int32Array(this.#floods * 2);
      datagrams.set(this.#floodDatagrams);
      lengths.set(this.#floodLengths);
      this.#floodDatagrams = datagrams;
      this.#floodLengths = lengths;
    }
    this.#floodDatagrams[this.#floods] = datagram;
    this.#floodLengths[this.#floods++] = length;
  }

  /**
   * Sends a copy of every flood noted since the last call to every member
   * that does not hear us through the group, reusing the datagrams already
   * aimed in `vector` after its own send; counts them in `counters`.
   */
  replicate(vector: DatagramVector, fd: number, counters: Float64Array): void {
    const floods = this.#floods, frames = this.#floodFrames, targets = this.members.targetCount;
    this.#floods = 0;
    this.#floodFrames = 0;
    if (floods === 0 || targets === 0) return;
    let prepared = 0, failed = 0;
    // Member by member, so that a frame's pieces to one member follow each other: sendAll
    // counts them as one frame.
    for (let m = 0; m < targets; m++) {
      for (let f = 0; f < floods; f++) {
        vector.prepareMessage(
          prepared++,
          this.#floodDatagrams[f],
          1,
          this.#floodLengths[f],
          this.#targetsAddress + m * SOCKADDR_SIZE,
          this.#nameLength,
        );
        if (prepared === vector.capacity) {
          failed += vector.sendAll(fd, prepared);
          prepared = 0;
        }
      }
    }
    failed += vector.sendAll(fd, prepared);
    counters[Counter.sentUnicast] += frames * targets - failed;
    counters[Counter.dropSendError] += failed;
  }

  /**
   * For a plug's warm-up (plugs/_warmup.ts): copies of floods go to
   * `address` alone, a loopback peer of the warm-up's, until the function
   * returned is called, which gives the members back. Nothing else of the
   * mesh changes, and nothing of it runs in between (its hellos and timer
   * wait for the plug's serve loop): the warm-up runs the mesh's own code.
   */
  copyFloodsOnlyTo(address: SocketAddress): () => void {
    const members = this.members, count = members.targetCount;
    const saved = members.targets.slice(0, count * SOCKADDR_SIZE);
    members.targets.set(address.bytes.subarray(0, SOCKADDR_SIZE));
    members.targetCount = 1;
    return () => {
      members.targets.set(saved);
      members.targetCount = count;
    };
  }

  /** What `vdeno status` shows. */
  describe(): Record<string, unknown> {
    return {
      listener: this.listener.listening
        ? this.listener.address.toString()
        : `none (${this.listener.taken ?? "no address"} is taken; a seed for nobody)`,
      peerTimeoutSeconds: this.members.timeoutSeconds,
      members: this.members.view(Date.now() / 1000),
    };
  }

  /**
   * Says goodbye to every member by unicast (the plug says it to the group),
   * unless `goodbye` is false, and stops the timer.
   */
  close(goodbye = true): void {
    if (goodbye) {
      for (const member of this.members.unicastMembers(Date.now() / 1000)) {
        this.#link.sendGoodbye(member);
      }
    }
    this.#ticker.close();
  }

  #hello(now: number, to?: SocketAddress): number {
    const members = this.members.sample(now, MAX_TOLD, to);
    return encodeHello({ instance: this.instance, members, toGroup: to === undefined }, this.#body);
  }

  #prompt(to: SocketAddress | undefined, now: number): void {
    const second = Math.floor(now);
    if (second !== this.#promptSecond) [this.#promptSecond, this.#promptCount] = [second, 0];
    if (this.#promptCount++ >= PROMPT_HELLOS_PER_SECOND) return;
    this.#link.sendHello(this.#body, this.#hello(now, to), to);
  }
}
