/**
 * The forwarding table of a vxvde plug: which peer (UDP address and port)
 * owns which MAC address, and since when.
 *
 * Direct-mapped like vdeplug4's: a new MAC that hashes to a taken slot
 * replaces the entry there, so lookups are O(1) and the table can never grow
 * beyond its size, whatever a hostile sender claims. The hash is keyed with a
 * random seed so that nobody can aim collisions at a known victim.
 *
 * @module
 */

import { SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import { Counter } from "../core/counters.ts";
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
    this.#seed = crypto.getRandomValues(new Uint32Array(1))[0];
    this.expireSeconds = expireSeconds;
    this.#counters = counters;
    this.#name = name;
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

  #slot(high: number, low: number): number {
    let h = Math.imul(low ^ this.#seed, 0x85ebca6b) ^ Math.imul(high, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x27d4eb2f);
    h ^= h >>> 13;
    return h & this.#mask;
  }

  /**
   * The slot of the live entry for the MAC at `offset` of `bytes`, or -1 when
   * it is a group address, unknown or expired.
   */
  lookup(bytes: Uint8Array, offset: number, now: number): number {
    if (bytes[offset] & 1) return -1;
    const high = (bytes[offset] << 8) | bytes[offset + 1];
    const low = ((bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) |
      (bytes[offset + 4] << 8) | bytes[offset + 5]) >>> 0;
    const slot = this.#slot(high, low);
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
  learn(bytes: Uint8Array, offset: number, names: Uint32Array, nameWord: number, now: number) {
    if (bytes[offset] & 1) return;
    const high = (bytes[offset] << 8) | bytes[offset + 1];
    const low = ((bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) |
      (bytes[offset + 4] << 8) | bytes[offset + 5]) >>> 0;
    const mac = high * 4294967296 + low;
    const slot = this.#slot(high, low);
    const seen = this.#lastSeen[slot];
    const words = this.#addressWords;
    const base = slot * WORDS_PER_ADDRESS;
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
    } else if (logs("debug")) {
      let moved = false;
      for (let w = 0; w < 7 && !moved; w++) moved = words[base + w] !== names[nameWord + w];
      if (moved) {
        this.#debug(
          now,
          `${formatMac(mac)} moved from ${this.peerOf(slot)} to ${senderOf(names, nameWord)}`,
        );
      }
    }
    this.#lastSeen[slot] = now;
    for (let w = 0; w < 7; w++) words[base + w] = names[nameWord + w];
  }

  /** Forgets every MAC learned from the sender address at `nameWord` of `names` (its goodbye). */
  forget(names: Uint32Array, nameWord: number, now = Date.now() / 1000): number {
    let forgotten = 0;
    const words = this.#addressWords;
    for (let slot = 0; slot < this.size; slot++) {
      if (this.#lastSeen[slot] === 0) continue;
      const base = slot * WORDS_PER_ADDRESS;
      let same = true;
      for (let w = 0; w < 7 && same; w++) same = words[base + w] === names[nameWord + w];
      if (same) {
        this.#lastSeen[slot] = 0;
        forgotten++;
      }
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

/** The sender address at word `nameWord` of `names`, as address:port. */
function senderOf(names: Uint32Array, nameWord: number): string {
  const bytes = new Uint8Array(SOCKADDR_SIZE);
  bytes.set(new Uint8Array(names.buffer, names.byteOffset + nameWord * 4, SOCKADDR_SIZE));
  return new SocketAddress(bytes).toString();
}
