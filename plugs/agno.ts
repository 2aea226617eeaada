/**
 * `agno://[KEYFILE][[ethtype=TYPE]]{VNL}`: VDE's encrypting nested plugin
 * (vdeplug_agno, Debian `libvdeplug-agno`), byte-compatible, wrapping any
 * other VNL: `agno:///etc/lan.agno{vxvde://234.0.0.1}` shares a network with
 * `vdens agno:///etc/lan.agno{vxvde://234.0.0.1}`.
 *
 * On the inner network a frame becomes: the 12 MAC bytes in clear, an outer
 * EtherType (0xa6de, or as `ethtype=` says: `copy`, `ipv4`, `ipv6`, `rand`,
 * a number), one AES-128-ECB block holding a 16-byte header (original
 * EtherType, padding length, the tag `agno`, the time, 4 random bytes), then
 * the payload zero-padded to whole blocks, AES-128-CBC with the plaintext
 * header as IV. A receiver keeps frames whose tag decrypts to `agno` and
 * whose time is within [-1, +2] s of its own clock.
 *
 * agno hides what frames carry but authenticates nothing (CBC is malleable:
 * bits flipped in transit flip bits of the frame) and replays within those 3
 * seconds pass. Between vdeno plugs, a keyed vxvde network (`key=`) is both
 * encrypted and authenticated; agno is for talking to VDE's own tools.
 *
 * The key file (default `~/.vde_agno_key`; an absolute path or `~/...`)
 * holds hex digits, the first 32 of which are the AES-128 key; like the
 * reference, an uppercase `A` reads as 1. vdeno refuses a key file other
 * users can read, which the reference does not check.
 *
 * @module
 */

import { Aes128, AES_BLOCK, randomBytes, slotPointers } from "../ffi/crypto.ts";
import { getEnv, readFileWithInfo, readTextFile, userId } from "../ffi/os.ts";
import { Counter } from "../core/counters.ts";
import { ETH_HEADER, type FrameBatch, HEADROOM, PerBatch, SLOT_SIZE } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";
import { parseOptions, splitNested, splitQuoted, VnlError } from "../core/vnl.ts";

/** The outer EtherType agno uses unless told otherwise. */
export const AGNO_ETHERTYPE = 0xa6de;
/** Bytes of the encrypted header agno puts after the MAC addresses. */
export const AGNO_HEADER = 16;
const TAG = [0x61, 0x67, 0x6e, 0x6f]; // "agno"
const DEFAULT_KEYFILE = ".vde_agno_key";
/** `ethtype=copy`: the outer EtherType is the frame's own. */
const COPY = 0;
/** `ethtype=rand`: a random outer EtherType (0x600 to 0xfffe) per frame. */
const RANDOM = -1;

/** The settings of an agno plug, as parsed from its VNL. */
export interface AgnoConfig {
  /** The key file as written in the VNL ("" for the default). */
  keyFile: string;
  /** The outer EtherType: a number, COPY (0) or RANDOM (-1). */
  ethertype: number;
  /** The nested VNL. */
  inner: string;
}

/** Parses the part of an agno VNL after `agno://`, as vdeplug4 splits it. */
export function parseAgno(rest: string): AgnoConfig {
  const nested = splitNested(rest);
  if (!nested) {
    throw new VnlError(
      `agno:// needs a nested VNL in braces, e.g. agno:///etc/lan.agno{vxvde://234.0.0.1}`,
    );
  }
  const bracket = nested.outer.indexOf("[");
  const keyFile = bracket < 0 ? nested.outer : nested.outer.slice(0, bracket);
  let ethtype = "";
  if (bracket >= 0) {
    const close = nested.outer.lastIndexOf("]");
    const inside = nested.outer.slice(bracket + 1, close > bracket ? close : undefined);
    ethtype = parseOptions("agno", "/" + inside, ["ethtype"]).options.ethtype ?? "";
  }
  // Quotes and %XX are decoded in the key path as in any VNL element; it has no delimiters.
  const [path] = splitQuoted(keyFile, "");
  return { keyFile: path, ethertype: parseEthertype(ethtype), inner: nested.inner };
}

function parseEthertype(text: string): number {
  if (text === "copy") return COPY;
  if (text === "ipv4") return 0x0800;
  if (text === "ipv6") return 0x86dd;
  if (text === "rand") return RANDOM;
  if (text === "") return AGNO_ETHERTYPE;
  // strtoul(text, &end, 0): a leading number in C form; trailing characters are ignored.
  const match = /^\s*[+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)/.exec(text);
  const value = match
    ? (/^0[xX]/.test(match[1])
      ? parseInt(match[1], 16)
      : match[1].length > 1 && match[1][0] === "0"
      ? parseInt(match[1], 8)
      : Number(match[1]))
    : NaN;
  if (value === 0) return AGNO_ETHERTYPE;
  if (!(value >= 0x600 && value < 0xffff)) {
    throw new VnlError(
      `Bad ethtype: ${
        JSON.stringify(text)
      }; expected copy, ipv4, ipv6, rand or a number from 0x600 to 0xfffe`,
    );
  }
  return value;
}

/** The home directory of the effective user, as the reference finds it (passwd, then $HOME). */
function homeDirectory(): string {
  const uid = userId();
  try {
    for (const line of readTextFile("/etc/passwd").split("\n")) {
      const fields = line.split(":");
      if (fields.length >= 6 && Number(fields[2]) === uid) return fields[5];
    }
  } catch { /* no passwd file: fall back to $HOME */ }
  return getEnv("HOME") ?? "/";
}

/** The path a key file spec names: "" for ~/.vde_agno_key, `~...` under home, or absolute. */
export function agnoKeyPath(spec: string): string {
  if (spec === "") return `${homeDirectory()}/${DEFAULT_KEYFILE}`;
  if (spec.startsWith("~")) return `${homeDirectory()}/${spec.slice(1)}`;
  if (spec.startsWith("/")) return spec;
  throw new VnlError(
    `Bad agno key file: ${
      JSON.stringify(spec)
    }; use an absolute path or ~/... (or nothing for ~/${DEFAULT_KEYFILE})`,
  );
}

/**
 * The AES-128 key in agno key file text: the first 32 hex digits, other
 * characters ignored, missing digits zero. An uppercase `A` counts as 1, as
 * the reference's digit parser reads it. Returns undefined under 2 digits.
 */
export function parseAgnoKey(text: string): Uint8Array<ArrayBuffer> | undefined {
  const key = new Uint8Array(16);
  let digits = 0;
  for (let i = 0; i < text.length && digits < 32; i++) {
    const c = text.charCodeAt(i);
    const isHex = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
    if (!isHex) continue;
    // Letters above 'A' get 9 added to their low nibble; 'A' itself does not, so it reads as 1.
    const value = (c & 0xf) + (c > 0x41 ? 9 : 0);
    if (digits & 1) key[digits >> 1] |= value;
    else key[digits >> 1] = value << 4;
    digits++;
  }
  return digits < 2 ? undefined : key;
}

/** Reads an agno key file, refusing one other users can read or write. */
export function readAgnoKey(spec: string): Uint8Array<ArrayBuffer> {
  const path = agnoKeyPath(spec);
  let text: string;
  let mode: number;
  try {
    const file = readFileWithInfo(path);
    mode = file.info.mode & 0o777;
    text = new TextDecoder().decode(file.bytes);
  } catch (error) {
    throw new Error(`Cannot read agno key file ${path}: ${(error as Error).message}`);
  }
  if (mode & 0o077) {
    throw new Error(
      `Key file ${path} is open to other users (mode ${
        mode.toString(8).padStart(4, "0")
      }); run chmod 600 ${path}`,
    );
  }
  const key = parseAgnoKey(text);
  if (!key) throw new Error(`Bad agno key file ${path}: expected 32 hex digits`);
  return key;
}

/** Per-batch pointers: each slot's agno header and payload. */
interface SlotParts {
  header: Deno.PointerObject[];
  payload: Deno.PointerObject[];
}

/** Contexts for one direction: ECB for the header, CBC for the payload. */
interface Direction {
  header: Aes128;
  payload: Aes128;
}

/** A plug that encrypts frames agno's way on the way into a nested plug. */
export class AgnoPlug implements Plug {
  readonly vnl: string;
  readonly config: AgnoConfig;
  readonly inner: Plug;
  readonly fds: readonly number[];
  /** The inner plug's counters, with agno's drops added to them. */
  readonly counters: Float64Array;
  readonly #encrypt: Direction;
  readonly #decrypt: Direction;
  readonly #parts = new PerBatch((batch): SlotParts => {
    const [header, payload] = slotPointers(batch.bytes, SLOT_SIZE, batch.capacity, [
      HEADROOM + ETH_HEADER,
      HEADROOM + ETH_HEADER + AGNO_HEADER,
    ]);
    return { header, payload };
  });
  #random = new Uint8Array(0);

  /** `openInner` opens the nested VNL: the registry's opener, passed in so agno need not import it. */
  constructor(vnl: string, rest: string, openInner: (vnl: string) => Plug) {
    this.vnl = vnl;
    const config = this.config = parseAgno(rest);
    const key = readAgnoKey(config.keyFile);
    this.#encrypt = { header: new Aes128(key, "ecb", true), payload: new Aes128(key, "cbc", true) };
    this.#decrypt = {
      header: new Aes128(key, "ecb", false),
      payload: new Aes128(key, "cbc", false),
    };
    key.fill(0);
    try {
      this.inner = openInner(config.inner);
    } catch (error) {
      this.#closeCiphers();
      throw error;
    }
    this.fds = this.inner.fds;
    this.counters = this.inner.counters;
  }

  get backlog(): boolean {
    return this.inner.backlog ?? false;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    const first = batch.count;
    const open = this.inner.receive(batch, readyMask);
    if (batch.count === first) return open;
    const parts = this.#parts.of(batch);
    const bytes = batch.bytes, counters = this.counters;
    const now = Math.floor(Date.now() / 1000);
    for (let i = first; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      batch.lengths[i] = 0;
      const offset = i * SLOT_SIZE + HEADROOM;
      const sealed = length - ETH_HEADER - AGNO_HEADER;
      if (sealed < 0 || sealed % AES_BLOCK !== 0) {
        counters[Counter.dropMalformed]++;
        continue;
      }
      const header = offset + ETH_HEADER;
      if (!this.#decrypt.header.run(null, parts.header[i], AGNO_HEADER)) continue;
      if (
        bytes[header + 4] !== TAG[0] || bytes[header + 5] !== TAG[1] ||
        bytes[header + 6] !== TAG[2] || bytes[header + 7] !== TAG[3]
      ) {
        counters[Counter.dropAuthFailed]++;
        continue;
      }
      const time = ((bytes[header + 8] << 24) | (bytes[header + 9] << 16) |
        (bytes[header + 10] << 8) | bytes[header + 11]) >>> 0;
      const skew = now - time + 1;
      if (skew < 0 || skew > 3) {
        counters[Counter.dropReplay]++;
        continue;
      }
      const payloadLength = sealed - (bytes[header + 2] & 0xf);
      if (payloadLength < 0) {
        counters[Counter.dropMalformed]++;
        continue;
      }
      if (!this.#decrypt.payload.run(parts.header[i], parts.payload[i], sealed)) continue;
      bytes[offset + 12] = bytes[header];
      bytes[offset + 13] = bytes[header + 1];
      bytes.copyWithin(header, header + AGNO_HEADER, header + AGNO_HEADER + payloadLength);
      batch.lengths[i] = ETH_HEADER + payloadLength;
    }
    return open;
  }

  send(batch: FrameBatch): void {
    const parts = this.#parts.of(batch);
    const bytes = batch.bytes;
    if (this.#random.length < batch.capacity * 6) this.#random = new Uint8Array(batch.capacity * 6);
    const random = randomBytes(this.#random);
    const now = Math.floor(Date.now() / 1000) >>> 0;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      if (length < ETH_HEADER) {
        this.counters[Counter.dropTooShort]++;
        batch.lengths[i] = 0;
        continue;
      }
      const offset = i * SLOT_SIZE + HEADROOM;
      const header = offset + ETH_HEADER;
      const payloadLength = length - ETH_HEADER;
      const padded = Math.ceil(payloadLength / AES_BLOCK) * AES_BLOCK;
      // Make room for the header: the payload moves 16 bytes on, into the slot's tailroom.
      bytes.copyWithin(header + AGNO_HEADER, header, offset + length);
      bytes.fill(0, header + AGNO_HEADER + payloadLength, header + AGNO_HEADER + padded);
      bytes[header] = bytes[offset + 12];
      bytes[header + 1] = bytes[offset + 13];
      bytes[header + 2] = padded - payloadLength;
      bytes[header + 3] = 0;
      bytes.set(TAG, header + 4);
      bytes[header + 8] = now >>> 24;
      bytes[header + 9] = (now >>> 16) & 0xff;
      bytes[header + 10] = (now >>> 8) & 0xff;
      bytes[header + 11] = now & 0xff;
      const r = i * 6;
      bytes[header + 12] = random[r];
      bytes[header + 13] = random[r + 1];
      bytes[header + 14] = random[r + 2];
      bytes[header + 15] = random[r + 3];
      const ethertype = this.config.ethertype === RANDOM
        ? 0x600 + ((random[r + 4] << 8) | random[r + 5]) % 0xf9ff
        : this.config.ethertype;
      if (ethertype !== COPY) {
        bytes[offset + 12] = ethertype >> 8;
        bytes[offset + 13] = ethertype & 0xff;
      }
      // The payload first, while the header is still plaintext: it is the CBC IV.
      const ok = this.#encrypt.payload.run(parts.header[i], parts.payload[i], padded) &&
        this.#encrypt.header.run(null, parts.header[i], AGNO_HEADER);
      batch.lengths[i] = ok ? ETH_HEADER + AGNO_HEADER + padded : 0;
    }
    this.inner.send(batch);
  }

  describe(): Record<string, unknown> {
    return {
      ...this.inner.describe?.(),
      agno: {
        keyFile: agnoKeyPath(this.config.keyFile),
        ethertype: this.config.ethertype === RANDOM
          ? "rand"
          : this.config.ethertype === COPY
          ? "copy"
          : "0x" + this.config.ethertype.toString(16),
        inner: this.inner.vnl,
      },
    };
  }

  #closeCiphers(): void {
    for (const direction of [this.#encrypt, this.#decrypt]) {
      direction.header.close();
      direction.payload.close();
    }
  }

  close(): void {
    this.inner.close();
    this.#closeCiphers();
  }
}
