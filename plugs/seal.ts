/**
 * Sealed vxvde datagrams: what `key=` does to a vxvde network.
 *
 * Every datagram is encrypted and authenticated with AES-256-GCM under a key
 * derived (HKDF-SHA-256) from the network's shared secret and its VNI, so the
 * same secret gives unrelated keys on different VNIs. A sealed datagram is:
 *
 *     header 8 | time 4 | sender 4 | sequence 8 | tag 16 | encrypted frame
 *
 * - header: the vxvde header with byte 3 (reserved in vxvde) set to 0x5e, so
 *   a vdeplug4 plug, which compares all 8 header bytes, drops it, and a sealed
 *   plug drops every plaintext datagram;
 * - time: the sender's clock in seconds, checked only the first time a sender
 *   is seen (see below);
 * - sender and sequence form the 96-bit GCM nonce. The sender id is random,
 *   chosen at open; the sequence starts at (open time in seconds) * 2^32 and
 *   counts up, so a nonce repeats only if two plugs pick the same 32-bit id
 *   in the same second;
 * - everything before the tag is authenticated along with the frame.
 *
 * Each receiver keeps a replay window per sender (1024 sequence numbers,
 * RFC 6479 style). A sender it has no window for (new, restarted, or idle
 * for a while) is accepted only if its time is within FRESH_SECONDS of ours:
 * this stops old recordings from being replayed to a plug that restarted,
 * and it is why keyed hosts need clocks that agree within that much.
 *
 * Goodbyes are sealed datagrams with an empty frame, so nobody without the
 * key can make a plug forget its peers.
 *
 * @module
 */

import { Gcm, GCM_TAG_SIZE, hkdfSha256, randomBytes, slotPointers } from "../ffi/crypto.ts";
import { type FileInfo, getEnv, readFileWithInfo, userId } from "../ffi/os.ts";
import { type FrameBatch, HEADROOM, PerBatch, SLOT_SIZE } from "../core/frames.ts";
import { HEADER_SIZE, SEALED_MARK, vxvdeHeader } from "./_vxheader.ts";

export { SEALED_MARK };

/** Bytes before the frame in a sealed datagram. */
export const SEALED_PREFIX = HEADER_SIZE + 4 + 4 + 8 + GCM_TAG_SIZE;
/** A sender seen for the first time must have a clock within this of ours. */
export const FRESH_SECONDS = 120;
/** Bytes of secret in a key. */
export const KEY_SIZE = 32;

const AAD_SIZE = HEADER_SIZE + 4 + 4 + 8;
const TIME_AT = HEADER_SIZE;
const SENDER_AT = HEADER_SIZE + 4;
const SEQUENCE_AT = HEADER_SIZE + 8;
const TAG_AT = AAD_SIZE;
const WINDOW_WORDS = 32;
/** Sequence numbers a window remembers below the highest one seen. */
export const WINDOW_SIZE = (WINDOW_WORDS - 1) * 32;
/** Senders remembered at most; beyond it the longest idle are forgotten. */
const MAX_SENDERS = 4096;
const TWO_32 = 2 ** 32;

/** The 8 header bytes of a sealed network on `vni`. */
export function sealedHeader(vni: number): Uint8Array<ArrayBuffer> {
  return vxvdeHeader(vni, SEALED_MARK);
}

/** The AES-256-GCM key of a network: HKDF of the shared secret, bound to the VNI. */
export function networkKey(secret: Uint8Array<ArrayBuffer>, vni: number): Uint8Array<ArrayBuffer> {
  const info = new TextEncoder().encode("vdeno vxvde sealed v1 vni ");
  const bound = new Uint8Array(info.length + 3);
  bound.set(info);
  bound.set([(vni >> 16) & 0xff, (vni >> 8) & 0xff, vni & 0xff], info.length);
  return hkdfSha256(secret, new TextEncoder().encode("vdeno-vxvde-key"), bound);
}

/** What became of a datagram that was opened. */
export const Verdict = { ok: 0, forged: 1, replayed: 2 } as const;

/**
 * The replay window of one sender: the highest sequence number seen (split in
 * 32-bit halves) and a ring bitmap of the ones just below it.
 */
export class ReplayWindow {
  high = 0;
  top = 0;
  lastSeen = 0;
  readonly #bits = new Uint32Array(WINDOW_WORDS);

  /** Whether sequence (high, low) is new: above the top, or inside the window and unseen. */
  fresh(high: number, low: number): boolean {
    if (high !== this.high) return high > this.high;
    if (low > this.top) return true;
    if (this.top - low >= WINDOW_SIZE) return false;
    return (this.#bits[(low >>> 5) % WINDOW_WORDS] & (1 << (low & 31))) === 0;
  }

  /** Records (high, low) as seen; call only after {@linkcode fresh} said yes and the tag verified. */
  accept(high: number, low: number, now: number): void {
    this.lastSeen = now;
    if (high !== this.high) {
      this.high = high;
      this.top = low;
      this.#bits.fill(0);
    } else if (low > this.top) {
      const from = this.top >>> 5, to = low >>> 5;
      const clear = Math.min(to - from, WINDOW_WORDS);
      for (let w = 1; w <= clear; w++) this.#bits[(from + w) % WINDOW_WORDS] = 0;
      this.top = low;
    }
    this.#bits[(low >>> 5) % WINDOW_WORDS] |= 1 << (low & 31);
  }
}

/** Per-batch pointers to the parts of each slot's sealed datagram. */
interface SlotParts {
  aad: Deno.PointerObject[];
  nonce: Deno.PointerObject[];
  tag: Deno.PointerObject[];
  frame: Deno.PointerObject[];
}

/**
 * Seals and opens the datagrams of one vxvde plug. The caller writes the
 * header at `frame - SEALED_PREFIX` before sealing; received datagrams land
 * with their frame where the batch keeps frames, so nothing moves.
 */
export class Sealer {
  /** This plug's random sender id. */
  readonly senderId: number;
  readonly #sealing: Gcm;
  readonly #opening: Gcm;
  readonly #senders = new Map<number, ReplayWindow>();
  readonly #parts = new PerBatch((batch): SlotParts => {
    const start = HEADROOM - SEALED_PREFIX;
    const [aad, nonce, tag, frame] = slotPointers(batch.bytes, SLOT_SIZE, batch.capacity, [
      start,
      start + SENDER_AT,
      start + TAG_AT,
      HEADROOM,
    ]);
    return { aad, nonce, tag, frame };
  });
  #sequenceHigh: number;
  #sequenceLow = 0;

  /** A sealer for a network with `secret` (32 bytes) on `vni`. */
  constructor(secret: Uint8Array<ArrayBuffer>, vni: number) {
    const key = networkKey(secret, vni);
    this.#sealing = new Gcm(key, true);
    this.#opening = new Gcm(key, false);
    key.fill(0);
    this.senderId = new DataView(randomBytes(new Uint8Array(4)).buffer).getUint32(0);
    this.#sequenceHigh = Math.floor(Date.now() / 1000) >>> 0;
  }

  /**
   * Seals frame i of `batch` (`length` bytes, 0 for a goodbye) in place; the
   * header must already be in place. `now` is the time in seconds.
   */
  seal(batch: FrameBatch, i: number, length: number, now: number): boolean {
    const parts = this.#parts.of(batch);
    const words = batch.bytes;
    const at = i * SLOT_SIZE + HEADROOM - SEALED_PREFIX;
    writeUint32(words, at + TIME_AT, now >>> 0);
    writeUint32(words, at + SENDER_AT, this.senderId);
    writeUint32(words, at + SEQUENCE_AT, this.#sequenceHigh);
    writeUint32(words, at + SEQUENCE_AT + 4, this.#sequenceLow);
    if (++this.#sequenceLow === TWO_32) {
      this.#sequenceLow = 0;
      this.#sequenceHigh = (this.#sequenceHigh + 1) >>> 0;
    }
    return this.#sealing.seal(
      parts.nonce[i],
      parts.aad[i],
      AAD_SIZE,
      parts.frame[i],
      length,
      parts.tag[i],
    );
  }

  /**
   * Opens the sealed datagram in slot i, whose frame part is `length` bytes:
   * checks the replay window, decrypts in place and verifies. Returns a
   * {@linkcode Verdict}. `now` is the time in seconds.
   */
  open(batch: FrameBatch, i: number, length: number, now: number): number {
    const bytes = batch.bytes;
    const at = i * SLOT_SIZE + HEADROOM - SEALED_PREFIX;
    const sender = readUint32(bytes, at + SENDER_AT);
    const high = readUint32(bytes, at + SEQUENCE_AT);
    const low = readUint32(bytes, at + SEQUENCE_AT + 4);
    let window = this.#senders.get(sender);
    if (window === undefined) {
      if (Math.abs(now - readUint32(bytes, at + TIME_AT)) > FRESH_SECONDS) return Verdict.replayed;
    } else if (!window.fresh(high, low)) return Verdict.replayed;
    const parts = this.#parts.of(batch);
    const authentic = this.#opening.open(
      parts.nonce[i],
      parts.aad[i],
      AAD_SIZE,
      parts.frame[i],
      length,
      parts.tag[i],
    );
    if (!authentic) return Verdict.forged;
    if (window === undefined) {
      window = new ReplayWindow();
      this.#remember(sender, window, now);
    }
    window.accept(high, low, now);
    return Verdict.ok;
  }

  #remember(sender: number, window: ReplayWindow, now: number): void {
    if (this.#senders.size >= MAX_SENDERS) {
      for (const [id, old] of this.#senders) {
        if (now - old.lastSeen > 2 * FRESH_SECONDS) this.#senders.delete(id);
      }
      // Still full: forget the earliest remembered (Map keeps insertion order).
      for (const id of this.#senders.keys()) {
        if (this.#senders.size < MAX_SENDERS) break;
        this.#senders.delete(id);
      }
    }
    this.#senders.set(sender, window);
  }

  /** Frees the cipher contexts. */
  close(): void {
    this.#sealing.close();
    this.#opening.close();
  }
}

function writeUint32(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value >>> 24;
  bytes[at + 1] = (value >>> 16) & 0xff;
  bytes[at + 2] = (value >>> 8) & 0xff;
  bytes[at + 3] = value & 0xff;
}

function readUint32(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
}

/**
 * Reads a key file as `vdeno keygen` writes it: 64 hex digits (white space
 * ignored). The file is opened once and checked through that descriptor: it
 * must be a regular file, owned by this user or root, that no other user can
 * read or write (root too refuses a file another user planted).
 */
export function readKeyFile(path: string): Uint8Array<ArrayBuffer> {
  let file: { bytes: Uint8Array; info: FileInfo };
  try {
    file = readFileWithInfo(path);
  } catch (error) {
    throw new Error(`Cannot read key file ${path}: ${(error as Error).message}`);
  }
  const { info } = file;
  try {
    if (!info.isFile) throw new Error(`Key file ${path} is not a regular file`);
    const me = userId();
    if (info.uid !== me && info.uid !== 0) {
      throw new Error(
        `Key file ${path} belongs to user ${info.uid}, not to you (${me}) or root; ` +
          `use a key file of your own`,
      );
    }
    if (info.mode & 0o077) {
      throw new Error(
        `Key file ${path} is open to other users (mode ${
          (info.mode & 0o777).toString(8).padStart(4, "0")
        }); run chmod 600 ${path}`,
      );
    }
    return parseKeyBytes(file.bytes, `key file ${path}`);
  } finally {
    file.bytes.fill(0);
  }
}

/** Parses 64 hex digits (white space ignored) into a 32-byte secret. */
export function parseKey(text: string, what: string): Uint8Array<ArrayBuffer> {
  return parseKeyBytes(new TextEncoder().encode(text), what);
}

/** {@linkcode parseKey} on bytes, so that a key read from a file never becomes a string. */
function parseKeyBytes(bytes: Uint8Array, what: string): Uint8Array<ArrayBuffer> {
  const secret = new Uint8Array(KEY_SIZE);
  let digits = 0;
  for (const byte of bytes) {
    if (byte === 0x20 || (byte >= 0x09 && byte <= 0x0d)) continue;
    const value = hexValue(byte);
    if (value < 0 || digits === 2 * KEY_SIZE) {
      digits = -1;
      break;
    }
    secret[digits >> 1] |= (digits & 1) ? value : value << 4;
    digits++;
  }
  if (digits !== 2 * KEY_SIZE) {
    secret.fill(0);
    throw new Error(`Bad ${what}: expected 64 hex digits, as vdeno keygen writes`);
  }
  return secret;
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

/**
 * The secret a `key=` option names: `env:NAME` reads 64 hex digits from the
 * environment variable NAME, anything else is a key file path.
 */
export function loadKey(spec: string): Uint8Array<ArrayBuffer> {
  if (spec === "") throw new Error("Bad key: key= needs a key file or env:NAME");
  if (spec.startsWith("env:")) {
    const name = spec.slice(4);
    const value = getEnv(name);
    if (value === undefined) throw new Error(`Bad key: environment variable ${name} is not set`);
    return parseKey(value, `key in environment variable ${name}`);
  }
  return readKeyFile(spec);
}

/**
 * The environment variables that VNLs name as `env:NAME` (a key): what a child
 * process must not inherit. Any `env:NAME` in the text counts, so a nested or
 * quoted VNL, or an abbreviated option name, is covered too.
 */
export function keyVariables(vnls: readonly string[]): string[] {
  const names = new Set<string>();
  for (const vnl of vnls) {
    for (const match of vnl.matchAll(/env:([A-Za-z_][A-Za-z0-9_]*)/g)) names.add(match[1]);
  }
  return [...names];
}

/** A new random secret as key file text: 64 hex digits and a newline. */
export function newKeyText(): string {
  const secret = randomBytes(new Uint8Array(KEY_SIZE));
  const text = Array.from(secret, (b) => b.toString(16).padStart(2, "0")).join("") + "\n";
  secret.fill(0);
  return text;
}
