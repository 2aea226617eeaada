/**
 * The forwarding table of a vxvde plug: which peer (UDP address and port)
 * owns which MAC address, and since when.
 *
 * Direct-mapped like vdeplug4's: a new MAC that hashes to a taken slot
 * replaces the entry there, so lookups are O(1) and the table can never grow
 * beyond its size, whatever a hostile sender claims. The hash is keyed with a
 * random seed so that nobody can aim collisions at a known victim.
 *
 * Each peer's slots are chained in a list of their own, so a goodbye costs
 * the MACs it forgets, not a scan of the table: at hashsize=1048576 a scan
 * took milliseconds, and a stream of spoofed goodbyes would have stalled the
 * data path (bench/README.md).
 *
 * @module
 */

import { SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import { Counter } from "../core/counters.ts";
import { isGroupAddress } from "../core/frames.ts";
import { log, logs } from "../core/log.ts";

const WORDS_PER_ADDRESS = SOCKADDR_SIZE / 4;
/**
 * Debug lines about members learned and forgotten, at most this many a second
 * per table: a flood of new source MACs must not become a flood of lines.
 */
const DEBUG_LINES_PER_SECOND = 20;

/** A MAC held as a number (48 bits fit a double exactly), as 02:00:5e:00:00:01. */
export function formatMac(mac: number): string {
  return mac.toString(16).padStart(12, "0").replace(/(..)(?!$)/g, "$1:");
}

/** A learned MAC, for display. */
export interface LearnedEntry {
  slot: number;
  mac: number;
  ageSeconds: number;
}

export class MacTable {
  readonly size: number;
  /** Peer socket addresses, SOCKADDR_SIZE bytes per slot; sendmmsg points into it. */
  readonly addresses: Uint8Array<ArrayBuffer>;
  readonly #addressWords: Uint32Array;
  readonly #macs: Float64Array;
  /** Seconds (Date.now() / 1000) of the last frame from the MAC; 0 marks an empty slot. */
  readonly #lastSeen: Float64Array;
  readonly #mask: number;
  readonly #seed: number;
  readonly #counters: Float64Array;
  /** What debug lines call the table: its plug's VNL. */
  readonly #name: string;
  #debugSecond = 0;
  #debugLines = 0;
  #debugSuppressed = 0;
  expireSeconds: number;
  /** Per slot, the id of the peer whose list holds it, or -1. */
  readonly #owner: Int32Array;
  /** Per slot, the next and previous slot of its peer's list, or -1. */
  readonly #next: Int32Array;
  readonly #previous: Int32Array;
  /** Peer ids by socket address (as `keyOf` writes it); a peer exists while it holds a slot. */
  readonly #peerIds = new Map<string, number>();
  readonly #peerKeys: string[] = [];
  readonly #peerHeads: number[] = [];
  readonly #peerSlots: number[] = [];
  readonly #freePeerIds: number[] = [];
  /** Slots that goodbyes looked at, in all: what forgetting has cost. */
  forgetVisits = 0;

  constructor(
    requestedSize: number,
    expireSeconds: number,
    counters: Float64Array,
    name = "MAC table",
  ) {
    let size = 1;
    while (size < requestedSize) size *= 2;
    this.size = size;
    this.#mask = size - 1;
    this.addresses = new Uint8Array(size * SOCKADDR_SIZE);
    this.#addressWords = new Uint32Array(this.addresses.buffer);
    this.#macs = new Float64Array(size);
    this.#lastSeen = new Float64Array(size);
    // 30 bits: always a small integer. A seed beyond one in some tables and not in others (the
    // warm-up's) changes the field's representation, which deoptimizes every function that
    // hashes a MAC, on live traffic.
    this.#seed = crypto.getRandomValues(new Uint32Array(1))[0] & 0x3fffffff;
    this.expireSeconds = expireSeconds;
    this.#counters = counters;
    this.#name = name;
    this.#owner = new Int32Array(size).fill(-1);
    this.#next = new Int32Array(size).fill(-1);
    this.#previous = new Int32Array(size).fill(-1);
  }

  /** The number of peers that hold slots. */
  get peerCount(): number {
    return this.#peerIds.size;
  }

  #peerId(names: Uint32Array, nameWord: number): number {
    const key = keyOf(names, nameWord);
    let id = this.#peerIds.get(key);
    if (id === undefined) {
      id = this.#freePeerIds.pop() ?? this.#peerKeys.length;
      this.#peerKeys[id] = key;
      this.#peerHeads[id] = -1;
      this.#peerSlots[id] = 0;
      this.#peerIds.set(key, id);
    }
    return id;
  }

  #link(slot: number, id: number): void {
    const head = this.#peerHeads[id];
    this.#owner[slot] = id;
    this.#previous[slot] = -1;
    this.#next[slot] = head;
    if (head >= 0) this.#previous[head] = slot;
    this.#peerHeads[id] = slot;
    this.#peerSlots[id]++;
  }

  #unlink(slot: number): void {
    const id = this.#owner[slot];
    if (id < 0) return;
    const previous = this.#previous[slot], next = this.#next[slot];
    if (previous >= 0) this.#next[previous] = next;
    else this.#peerHeads[id] = next;
    if (next >= 0) this.#previous[next] = previous;
    this.#owner[slot] = -1;
    if (--this.#peerSlots[id] === 0) this.#releasePeer(id);
  }

  #releasePeer(id: number): void {
    this.#peerIds.delete(this.#peerKeys[id]);
    this.#peerKeys[id] = "";
    this.#freePeerIds.push(id);
  }

  /** The peer address in `slot`, as address:port. */
  peerOf(slot: number): string {
    const offset = slot * SOCKADDR_SIZE;
    return new SocketAddress(this.addresses.slice(offset, offset + SOCKADDR_SIZE)).toString();
  }

  /** Logs a change of the table at debug level, within the rate limit. */
  #debug(now: number, message: string): void {
    const second = Math.floor(now);
    if (second !== this.#debugSecond) {
      if (this.#debugSuppressed > 0) {
        log("debug", `${this.#name}: ${this.#debugSuppressed} more table changes not shown`);
      }
      this.#debugSecond = second;
      this.#debugLines = 0;
      this.#debugSuppressed = 0;
    }
    if (this.#debugLines++ < DEBUG_LINES_PER_SECOND) log("debug", `${this.#name}: ${message}`);
    else this.#debugSuppressed++;
  }

  /**
   * The slot of the MAC at `offset` of `bytes`. It reads the MAC itself: its
   * last four bytes, passed as a number, could be boxed (see setClock).
   */
  #slot(bytes: Uint8Array, offset: number): number {
    const high = (bytes[offset] << 8) | bytes[offset + 1];
    const low = (bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) |
      (bytes[offset + 4] << 8) | bytes[offset + 5];
    let h = Math.imul(low ^ this.#seed, 0x85ebca6b) ^ Math.imul(high, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x27d4eb2f);
    h ^= h >>> 13;
    return h & this.#mask;
  }

  /** The time {@linkcode lookup} and {@linkcode learn} use: see {@linkcode setClock}. */
  #now = Date.now() / 1000;

  /**
   * Sets the time, in seconds, that {@linkcode lookup} and {@linkcode learn}
   * use until the next call, once per batch; returns the table. A time passed
   * to them per frame would be a number V8 boxes, an allocation per frame,
   * whenever it does not inline them.
   */
  setClock(now: number): this {
    this.#now = now;
    return this;
  }

  /**
   * The slot of the live entry for the MAC at `offset` of `bytes`, or -1 when
   * it is a group address, unknown or expired.
   */
  lookup(bytes: Uint8Array, offset: number): number {
    const now = this.#now;
    if (isGroupAddress(bytes, offset)) return -1;
    const high = (bytes[offset] << 8) | bytes[offset + 1];
    const low = ((bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) |
      (bytes[offset + 4] << 8) | bytes[offset + 5]) >>> 0;
    const slot = this.#slot(bytes, offset);
    const seen = this.#lastSeen[slot];
    if (seen === 0 || this.#macs[slot] !== high * 4294967296 + low) return -1;
    if (seen < now - this.expireSeconds) {
      this.#lastSeen[slot] = 0;
      this.#counters[Counter.tableExpiries]++;
      if (logs("debug")) {
        this.#debug(
          now,
          `forgot ${formatMac(this.#macs[slot])} at ${this.peerOf(slot)}: ` +
            `not heard for ${this.expireSeconds} s`,
        );
      }
      return -1;
    }
    return slot;
  }

  /**
   * Records that the MAC at `offset` of `bytes` was seen from the sender
   * address at `nameOffset` of `names` (a SOCKADDR_SIZE-aligned buffer).
   */
  learn(bytes: Uint8Array, offset: number, names: Uint32Array, nameWord: number): void {
    const now = this.#now;
    if (isGroupAddress(bytes, offset)) return;
    const high = (bytes[offset] << 8) | bytes[offset + 1];
    const low = ((bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) |
      (bytes[offset + 4] << 8) | bytes[offset + 5]) >>> 0;
    const mac = high * 4294967296 + low;
    const slot = this.#slot(bytes, offset);
    const seen = this.#lastSeen[slot];
    const words = this.#addressWords;
    const base = slot * WORDS_PER_ADDRESS;
    // The slot's address words are its owner's address: the same words, the same peer.
    let sameSender = this.#owner[slot] >= 0;
    for (let w = 0; w < 7 && sameSender; w++) sameSender = words[base + w] === names[nameWord + w];
    if (seen === 0 || this.#macs[slot] !== mac || seen < now - this.expireSeconds) {
      const evicted = seen !== 0 && this.#macs[slot] !== mac && seen >= now - this.expireSeconds;
      if (evicted) this.#counters[Counter.tableEvictions]++;
      this.#counters[Counter.learned]++;
      if (evicted && logs("debug")) {
        this.#debug(
          now,
          `forgot ${formatMac(this.#macs[slot])} at ${this.peerOf(slot)}: ` +
            `${formatMac(mac)} took its slot ${slot}`,
        );
      }
      this.#macs[slot] = mac;
      if (logs("debug")) {
        this.#debug(now, `learned ${formatMac(mac)} at ${senderOf(names, nameWord)}`);
      }
    } else if (!sameSender && logs("debug")) {
      this.#debug(
        now,
        `${formatMac(mac)} moved from ${this.peerOf(slot)} to ${senderOf(names, nameWord)}`,
      );
    }
    this.#lastSeen[slot] = now;
    if (!sameSender) {
      this.#unlink(slot);
      this.#link(slot, this.#peerId(names, nameWord));
      for (let w = 0; w < 7; w++) words[base + w] = names[nameWord + w];
    }
  }

  /** Forgets every MAC learned from the sender address at `nameWord` of `names` (its goodbye). */
  forget(names: Uint32Array, nameWord: number, now = Date.now() / 1000): number {
    let forgotten = 0;
    const id = this.#peerIds.get(keyOf(names, nameWord));
    if (id !== undefined) {
      for (let slot = this.#peerHeads[id]; slot >= 0;) {
        const next = this.#next[slot];
        this.forgetVisits++;
        if (this.#lastSeen[slot] !== 0) forgotten++;
        this.#lastSeen[slot] = 0;
        this.#owner[slot] = -1;
        slot = next;
      }
      this.#releasePeer(id);
    }
    if (logs("debug")) {
      this.#debug(
        now,
        `forgot ${forgotten} MAC${forgotten === 1 ? "" : "s"} at ${senderOf(names, nameWord)}: ` +
          "it said goodbye",
      );
    }
    return forgotten;
  }

  /** The live entries, for display. */
  entries(now: number): LearnedEntry[] {
    const live: LearnedEntry[] = [];
    for (let slot = 0; slot < this.size; slot++) {
      const seen = this.#lastSeen[slot];
      if (seen !== 0 && seen >= now - this.expireSeconds) {
        live.push({ slot, mac: this.#macs[slot], ageSeconds: now - seen });
      }
    }
    return live;
  }
}

/** A sender's socket address (the 7 words a slot keeps) as a Map key. */
function keyOf(names: Uint32Array, nameWord: number): string {
  let key = String(names[nameWord]);
  for (let w = 1; w < 7; w++) key += "," + names[nameWord + w];
  return key;
}

/** The sender address at word `nameWord` of `names`, as address:port. */
function senderOf(names: Uint32Array, nameWord: number): string {
  const bytes = new Uint8Array(SOCKADDR_SIZE);
  bytes.set(new Uint8Array(names.buffer, names.byteOffset + nameWord * 4, SOCKADDR_SIZE));
  return new SocketAddress(bytes).toString();
}
