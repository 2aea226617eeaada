/**
 * Sealed vxvde datagrams: what `key=` does to a vxvde network.
 *
 * Every datagram is encrypted and authenticated with AES-256-GCM under a
 * traffic key derived (HKDF-SHA-256) from the network's shared secret, its
 * VNI, its group and its port: the same secret gives unrelated keys on other
 * VNIs, groups or ports, so datagrams cannot cross between two clouds. A
 * sealed datagram is:
 *
 *     header 8 | kind 1 | key id 3 | to 4 | sender 4 | sequence 8 | tag 16 | payload
 *
 * - header: the vxvde header with byte 3 (reserved in vxvde) set to 0x5e, so
 *   a vdeplug4 plug, which compares all 8 header bytes, drops it, and a sealed
 *   plug drops every plaintext datagram;
 * - kind: a frame (an empty one is a goodbye), or one of the messages below;
 * - key id: which traffic key sealed it (24 bits derived with the key), so a
 *   plug can hold several keys while the network changes its secret;
 * - to: a 32-bit tag of where the datagram was sent, the group or the
 *   receiver's unicast address and port: a receiver drops a datagram whose tag
 *   is not its own, so a datagram for one member replayed to another is
 *   refused;
 * - sender and sequence form the 96-bit GCM nonce. The sender id is random,
 *   chosen at open; the sequence starts at (open time in seconds) * 2^32 and
 *   counts up, so a nonce repeats only if two plugs pick the same 32-bit id
 *   in the same second. A plug drops datagrams that carry its own id;
 * - everything before the tag is authenticated along with the payload.
 *
 * Freshness. Each receiver keeps, per sender id, a replay window (32,736
 * sequence numbers, RFC 6479 style) and the address the sender was proven
 * at. A sender is proven by a challenge: a `hello` carrying a random nonce,
 * answered by a `proof` echoing it, sealed with the sender's current
 * sequence; the window starts there, with everything before it counted as
 * seen. Until then, and when a known sender id speaks from another address,
 * its datagrams are dropped and a hello goes to that address. So a plug,
 * fresh or not, accepts nothing sent before it heard the sender answer it:
 * a recording of any age, replayed from anywhere, is refused, and no clock
 * has to agree with any other. A plug sends a hello to the group when it
 * opens, and every member answers it and challenges it back, so a new member
 * is proven both ways within a round trip or two, before its first frame.
 *
 * Key rotation. {@linkcode Sealer.reload} takes a new secret: its key is
 * accepted for opening at once and announced (a `have` sealed with it, to the
 * group, once a second). The plug keeps sealing with the current key until
 * every member heard from in the last {@linkcode ACTIVE_SECONDS} has shown the
 * new one (a datagram or a `have` under it), or {@linkcode SWITCH_SECONDS}
 * passed, then switches. The old key still opens datagrams until none came
 * under it for {@linkcode RETIRE_SECONDS}.
 *
 * Goodbyes are sealed datagrams with an empty frame, so nobody without the
 * key can make a plug forget its peers.
 *
 * Pieces. A frame too long for one datagram on the route (a 1514-byte frame
 * behind the 44-byte prefix is 1586 bytes of IPv4 datagram) is not left to IP
 * fragmentation, which takes no UDP GSO or GRO and loses the whole frame with
 * either fragment: it is cut into pieces of equal length (the last may be
 * shorter), each sealed as a datagram of its own with the next sequence
 * numbers, of kind `first piece`, `piece` (between) and `last piece` (a
 * jumbo frame whose equal pieces would not fit its slot goes in pieces as
 * long as a datagram carries, the last shorter). A
 * receiver opens each as any datagram (so each is authentic, fresh and for it)
 * and keeps a sender's pieces from a first piece on, each following the one
 * before by sequence number, until the last: a frame of which a piece was
 * lost, reordered or replayed is dropped whole and counted. A plug that does
 * not know pieces drops all three kinds as control messages it does not know,
 * never delivering a part of a frame.
 *
 * @module
 */

import {
  Gcm,
  GCM_TAG_SIZE,
  type GcmSlots,
  gcmSlots,
  hkdfSha256,
  randomBytes,
  slotPointers,
} from "../ffi/crypto.ts";
import { type FileInfo, getEnv, interfaceAddresses, readFileWithInfo, userId } from "../ffi/os.ts";
import { FrameBatch, HEADROOM, MAX_FRAME, PerBatch, SLOT_SIZE } from "../core/frames.ts";
import { HEADER_SIZE, SEALED_MARK, vxvdeHeader } from "./_vxheader.ts";

export { SEALED_MARK };

/** Bytes before the frame in a sealed datagram. */
export const SEALED_PREFIX = HEADER_SIZE + 4 + 4 + 4 + 8 + GCM_TAG_SIZE;
/** Bytes of secret in a key. */
export const KEY_SIZE = 32;
/** A new key is used for sealing at the latest this long after it was loaded. */
export const SWITCH_SECONDS = 30;
/** Members heard from within this long must show a new key before it is used early. */
export const ACTIVE_SECONDS = 30;
/** The previous key opens datagrams until none came under it for this long. */
export const RETIRE_SECONDS = 30;

const KIND_AT = HEADER_SIZE;
const TO_AT = HEADER_SIZE + 4;
const SENDER_AT = HEADER_SIZE + 8;
const SEQUENCE_AT = HEADER_SIZE + 12;
const AAD_SIZE = HEADER_SIZE + 20;
const TAG_AT = AAD_SIZE;
const NONCE_SIZE = 16;
/**
 * 32,768 bits (4 KB) per sender. On a busy host a sender's datagrams can
 * arrive tens of thousands of places out of order: a UDP GSO message carries
 * up to 64, and a sending plug that moved to the other CPU between two sends
 * leaves messages in both CPUs' backlogs, which the receiving socket may get
 * one after the other. A late datagram below the window is refused as a
 * replay, and lost. With 8,192 bits, an unlimited UDP load of frames in
 * pieces counted 10k to 28k replays of some 300k frames in 4 of 6 runs of 4 s;
 * with 32,768, none in 8 (bench/README.md).
 */
const WINDOW_WORDS = 1024;
/** Sequence numbers a window remembers below the highest one seen. */
export const WINDOW_SIZE = (WINDOW_WORDS - 1) * 32;
/** Senders remembered at most; beyond it the longest idle are forgotten. */
const MAX_SENDERS = 4096;
/** Answers to the group hello a plug sends at open are taken this long. */
export const GREETING_SECONDS = 5;
/** Least seconds between two hellos to one sender. */
const CHALLENGE_INTERVAL = 0.2;
/** Least seconds between two answers to one sender's hellos. */
const ANSWER_INTERVAL = 0.05;
/** How long a hello's nonce may be answered. */
const NONCE_SECONDS = 2;
const TWO_32 = 2 ** 32;
const AF_INET = 2;

/** What a sealed datagram carries. */
export const Kind = {
  frame: 0,
  hello: 1,
  proof: 2,
  have: 3,
  firstPiece: 4,
  piece: 5,
  lastPiece: 6,
} as const;

/** The 8 header bytes of a sealed network on `vni`. */
export function sealedHeader(vni: number): Uint8Array<ArrayBuffer> {
  return vxvdeHeader(vni, SEALED_MARK);
}

/** Where a network is: what its traffic keys are bound to besides the secret. */
export interface NetworkPlace {
  vni: number;
  /** The group's socket address (struct sockaddr bytes, as `SocketAddress.bytes`). */
  group?: Uint8Array;
}

/**
 * The AES-256-GCM key of a network and its 24-bit id: HKDF of the shared
 * secret, bound to the VNI, the group and its port.
 */
export function networkKey(
  secret: Uint8Array<ArrayBuffer>,
  place: NetworkPlace,
): { key: Uint8Array<ArrayBuffer>; id: number } {
  const encoder = new TextEncoder();
  const salt = encoder.encode("vdeno-vxvde-key");
  const label = encoder.encode("vdeno vxvde sealed v2 ");
  const group = place.group ? sockaddrKey(place.group, 0) : new Uint8Array(0);
  const info = (what: string) => {
    const tail = encoder.encode(what);
    const bound = new Uint8Array(label.length + 3 + group.length + tail.length);
    bound.set(label);
    bound.set(
      [(place.vni >> 16) & 0xff, (place.vni >> 8) & 0xff, place.vni & 0xff],
      label.length,
    );
    bound.set(group, label.length + 3);
    bound.set(tail, label.length + 3 + group.length);
    return bound;
  };
  const key = hkdfSha256(secret, salt, info("key"));
  const idBytes = hkdfSha256(secret, salt, info("id"));
  const id = (idBytes[0] << 16) | (idBytes[1] << 8) | idBytes[2];
  idBytes.fill(0);
  return { key, id };
}

/** Family (1 byte), port and IP of the sockaddr at `offset`: what identifies an address. */
function sockaddrKey(bytes: Uint8Array, offset: number): Uint8Array {
  const v4 = (bytes[offset] | (bytes[offset + 1] << 8)) === AF_INET;
  const key = new Uint8Array(v4 ? 7 : 19);
  key[0] = v4 ? 4 : 6;
  key[1] = bytes[offset + 2];
  key[2] = bytes[offset + 3];
  key.set(bytes.subarray(offset + (v4 ? 4 : 8), offset + (v4 ? 8 : 24)), 3);
  return key;
}

/**
 * The 32-bit tag of the socket address at `offset` of `bytes` (a struct
 * sockaddr): FNV-1a over its family, port and IP. It names where a datagram
 * was sent; the GCM tag authenticates it.
 */
export function destinationTag(bytes: Uint8Array, offset: number): number {
  writeDestinationTag(TAG_SCRATCH, 0, bytes, offset);
  return readUint32(TAG_SCRATCH, 0);
}

const TAG_SCRATCH = new Uint8Array(4);

/**
 * Writes the {@linkcode destinationTag} of the address at `offset` of
 * `addresses` at `at` of `bytes`, big-endian. The data path writes it so:
 * a 32-bit value returned from a call that V8 does not inline is allocated.
 */
function writeDestinationTag(
  bytes: Uint8Array,
  at: number,
  addresses: Uint8Array,
  offset: number,
): void {
  const v4 = (addresses[offset] | (addresses[offset + 1] << 8)) === AF_INET;
  let hash = Math.imul(0x811c9dc5 ^ (v4 ? 4 : 6), 0x01000193);
  hash = Math.imul(hash ^ addresses[offset + 2], 0x01000193);
  hash = Math.imul(hash ^ addresses[offset + 3], 0x01000193);
  const ip = offset + (v4 ? 4 : 8), end = ip + (v4 ? 4 : 16);
  for (let k = ip; k < end; k++) hash = Math.imul(hash ^ addresses[k], 0x01000193);
  bytes[at] = hash >>> 24;
  bytes[at + 1] = (hash >>> 16) & 0xff;
  bytes[at + 2] = (hash >>> 8) & 0xff;
  bytes[at + 3] = hash & 0xff;
}

/** What became of a datagram that was opened. */
export const Verdict = {
  /** Authentic and fresh: deliver it (an empty frame is a goodbye). */
  ok: 0,
  /** Altered, or sealed with a key this plug does not hold. */
  forged: 1,
  /** Seen before, or older than its sender's proof. */
  replayed: 2,
  /** Sent to another member or group. */
  misdirected: 3,
  /** Our own datagram, come back. */
  own: 4,
  /** Authentic, but its sender is not proven at its address yet: a hello went there. */
  unproven: 5,
  /** A message for the sealer itself (hello, proof, have): nothing to deliver. */
  control: 6,
  /** Sealed with a key id this plug does not hold (another key, or a rotation under way). */
  unknownKey: 7,
  /** A piece of a frame, kept until the frame's last piece: nothing to deliver yet. */
  piece: 8,
  /**
   * A frame of which a piece is missing was dropped: the pieces kept when a piece of another
   * frame came, or a last piece that follows none kept.
   */
  incomplete: 9,
  /** A frame's last piece, which made it whole in its slot: deliver {@linkcode Sealer.joinedLength} bytes. */
  joined: 10,
} as const;

/**
 * No sender id or tag: beyond every 32-bit one. A double, not a small integer, so that a field that
 * holds one keeps the representation the ids need: a field V8 first saw holding -1 changes it at
 * the first id beyond 2^30, and every sealer made before (the plug's own, before its warm-up's)
 * then meets its code with a stale shape, a deoptimization on its first live frames.
 */
const NO_ID = 2 ** 32;

/**
 * The replay window of one sender: the highest sequence number seen (split in
 * 32-bit halves) and a ring bitmap of the ones just below it.
 */
export class ReplayWindow {
  high = 0;
  top = 0;
  /** When the sender was last heard from; never at first (a double from the start, see NO_ID). */
  lastSeen = -Infinity;
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

  /** Starts the window at (high, low), counting it and everything before it as seen. */
  startAt(high: number, low: number, now: number): void {
    this.lastSeen = now;
    this.high = high;
    this.top = low;
    this.#bits.fill(0xffffffff);
    const shift = (low & 31) + 1;
    this.#bits[(low >>> 5) % WINDOW_WORDS] = shift === 32 ? 0xffffffff : (1 << shift) - 1;
  }
}

/** What a receiver knows of one sender id. */
class Sender {
  readonly window = new ReplayWindow();
  /** The address it was proven at: sockaddr bytes. */
  readonly address = new Uint8Array(24);
  proven = false;
  /** The nonce of the hello it must answer, while one is out, and where that hello went. */
  nonce?: Uint8Array<ArrayBuffer>;
  readonly challenged = new Uint8Array(24);
  nonceAt = -Infinity;
  challengedAt = -Infinity;
  answeredAt = -Infinity;
  /** The nonce of the last hello answered. */
  answered?: Uint8Array;
  /** Whether it showed our next key since that key was loaded. */
  hasNext = false;
  /** The pieces of a frame kept until its last piece, made on its first piece. */
  pieces?: Uint8Array<ArrayBuffer>;
  /** Bytes kept in {@linkcode pieces}; 0 when no frame waits. */
  piecesLength = 0;
  /** Whether its frame in pieces lost one and was counted: its later pieces are dropped uncounted. */
  broken = false;
  /** The sequence number the next piece of the waiting frame must carry. */
  nextPieceHigh = 0;
  nextPieceLow = 0;
}

/** One traffic key, both ways. */
class TrafficKey {
  readonly id: number;
  readonly sealing: Gcm;
  readonly opening: Gcm;
  lastOpened: number;

  constructor(secret: Uint8Array<ArrayBuffer>, place: NetworkPlace, now: number) {
    const { key, id } = networkKey(secret, place);
    try {
      this.id = id;
      this.sealing = new Gcm(key, true);
      this.opening = new Gcm(key, false);
    } finally {
      key.fill(0);
    }
    this.lastOpened = now;
  }

  close(): void {
    this.sealing.close();
    this.opening.close();
  }
}

/** Per-batch pointers to the parts of one sealed datagram in each slot, and OpenSSL's view of them. */
interface PieceParts {
  aad: Deno.PointerObject[];
  frame: Deno.PointerObject[];
  sealing: GcmSlots;
}

/** {@linkcode PieceParts} of the datagram at each slot's start, which is also opened there. */
interface SlotParts extends PieceParts {
  opening: GcmSlots;
}

/**
 * Pointers to the parts of the datagrams of a received run, `stride` bytes
 * apart from `at` of `bytes`, and OpenSSL's view of them: made once per run
 * buffer and datagram size.
 */
interface RunParts {
  bytes: Uint8Array;
  stride: number;
  count: number;
  aad: Deno.PointerObject[];
  frame: Deno.PointerObject[];
  opening: GcmSlots;
}

/** Datagrams a run's parts are made for at least: as many as a UDP_GRO run holds. */
const RUN_DATAGRAMS = 64;

/** Where a received datagram came from and on which socket: for {@linkcode Sealer.open}. */
export interface DatagramSource {
  /** Sockaddr bytes holding the sender's address at `offset`. */
  names: Uint8Array;
  offset: number;
  /** Whether it arrived on the group's socket (else on our unicast socket). */
  fromGroup: boolean;
}

/** A sealed control datagram for the plug to send. */
export interface Outgoing {
  /** The datagram, header to end. */
  datagram: Uint8Array<ArrayBuffer>;
  /** Where to: sockaddr bytes (SOCKADDR_SIZE), or undefined for the group. */
  to?: Uint8Array<ArrayBuffer>;
}

/** What a reload did, in words for `vdeno reload`. */
export type ReloadResult = "unchanged" | "new key loaded";

/**
 * Seals and opens the datagrams of one vxvde plug. The caller writes the
 * header at `frame - SEALED_PREFIX` before sealing; received datagrams land
 * with their frame where the batch keeps frames, so nothing moves. Control
 * datagrams the sealer wants sent (hellos, proofs, announcements) wait in
 * {@linkcode takeOutgoing}.
 */
export class Sealer {
  /** This plug's random sender id. */
  readonly senderId: number;
  /** The tag of the group: where multicast datagrams are sent. */
  readonly groupTag: number;
  readonly #place: NetworkPlace;
  readonly #header: Uint8Array<ArrayBuffer>;
  #current: TrafficKey;
  #next?: TrafficKey;
  #nextSince = 0;
  #previous?: TrafficKey;
  #switchedAt = 0;
  readonly #senders = new Map<number, Sender>();
  /**
   * The sender of the last datagram opened, and its id: datagrams come in runs from one sender,
   * and a 32-bit id, beyond V8's small integers, is boxed (allocated) to look it up in the map.
   */
  #lastSender?: Sender;
  #lastSenderId = NO_ID;
  readonly #parts = new PerBatch((batch): SlotParts => {
    const start = HEADROOM - SEALED_PREFIX;
    const [aad, frame] = slotPointers(batch.bytes, SLOT_SIZE, batch.capacity, [start, HEADROOM]);
    const slots = (encrypt: boolean) =>
      gcmSlots(batch.bytes, SLOT_SIZE, batch.capacity, start + SENDER_AT, start + TAG_AT, encrypt);
    return { aad, frame, sealing: slots(true), opening: slots(false) };
  });
  /** Per run buffer (its offset in the batch bytes): the parts of its datagrams. */
  readonly #runParts = new Map<number, RunParts>();
  #sequenceHigh: number;
  #sequenceLow = 0;
  /** Tags of our unicast address on each local IP, refreshed when a tag is not found. */
  #localTags = new Set<number>();
  /** The last tag found in {@linkcode #localTags}, compared before the set for the same reason. */
  #lastLocalTag = NO_ID;
  #localPort = -1;
  #localRefreshedAt = -Infinity;
  /** The nonce of the hello sent to the group when the plug opened. */
  readonly #groupNonce = randomBytes(new Uint8Array(NONCE_SIZE));
  #greetedAt = -Infinity;
  #outgoing: Outgoing[] = [];
  /**
   * How many wait in {@linkcode #outgoing}, counted apart: the array's shape changes as it fills
   * and is replaced, and the data path, which asks after every batch, would meet a shape the
   * warm-up's sealer never showed it (a deoptimization on the first live frames).
   */
  #outgoingCount = 0;
  #control?: FrameBatch;
  #announceAt = Infinity;
  /** The length of the frame a last piece made whole (see {@linkcode Verdict.joined}). */
  joinedLength = 0;
  /** The longest frame one datagram carries on the route; longer ones go in pieces. */
  #pieceLimit = MAX_FRAME;
  /** How many pieces {@linkcode sealPieces} cut its frame into. */
  pieces = 0;
  /** How long each of those pieces is, and the last. */
  #pieceLength = 0;
  #lastPieceLength = 0;
  /** Per batch, per piece after the first: pointers to its parts in every slot, made when needed. */
  readonly #pieceParts = new PerBatch((): PieceParts[] => []);
  /** Called with a line worth logging (a key switch or retirement). */
  onEvent?: (message: string) => void;

  /** A sealer for a network with `secret` (32 bytes, zeroed by the caller) at `place`. */
  constructor(secret: Uint8Array<ArrayBuffer>, place: NetworkPlace | number) {
    this.#place = typeof place === "number" ? { vni: place } : place;
    this.#header = sealedHeader(this.#place.vni);
    const now = Date.now() / 1000;
    this.#current = new TrafficKey(secret, this.#place, now);
    // Each is a double first (see NO_ID): one sealer's may be a small integer and another's not.
    this.senderId = NO_ID;
    this.senderId = new DataView(randomBytes(new Uint8Array(4)).buffer).getUint32(0);
    this.#sequenceHigh = Math.floor(now) >>> 0;
    this.groupTag = NO_ID;
    this.groupTag = this.#place.group ? destinationTag(this.#place.group, 0) : 0;
  }

  /** The id of the key datagrams are sealed with now. */
  get keyId(): number {
    return this.#current.id;
  }

  /** The ids of the keys held: current, and the next or previous one while a change is under way. */
  get keys(): { current: number; next?: number; previous?: number } {
    return { current: this.#current.id, next: this.#next?.id, previous: this.#previous?.id };
  }

  /** Our unicast socket's port, whose address on every local IP is a valid destination. */
  setLocalPort(port: number): void {
    this.#localPort = port;
    this.#refreshLocalTags(-Infinity);
  }

  #refreshLocalTags(now: number): boolean {
    if (now - this.#localRefreshedAt < 1) return false;
    this.#localRefreshedAt = now;
    const tags = new Set<number>();
    const address = new Uint8Array(24);
    const view = new DataView(address.buffer);
    const add = (family: number, ip: Uint8Array) => {
      address.fill(0);
      view.setUint16(0, family, true);
      view.setUint16(2, this.#localPort);
      address.set(ip, family === AF_INET ? 4 : 8);
      tags.add(destinationTag(address, 0));
    };
    // Sent from 0.0.0.0 or :: when the multicast route is on the loopback: only this host.
    add(AF_INET, new Uint8Array(4));
    add(10, new Uint8Array(16));
    try {
      for (const entry of interfaceAddresses()) add(entry.family, entry.ip);
    } catch {
      // No address list: the ones above and the last known must do.
    }
    this.#localTags = tags;
    this.#lastLocalTag = NO_ID;
    return true;
  }

  /**
   * Seals frame i of `batch` (`length` bytes, 0 for a goodbye) in place with
   * the current key; the header must already be in place. `to` is the
   * {@linkcode destinationTag} of where it goes (the group by default).
   */
  seal(
    batch: FrameBatch,
    i: number,
    length: number,
    now: number,
    to = this.groupTag,
    kind: number = Kind.frame,
  ): boolean {
    if (now >= this.#announceAt) this.#tick(now);
    return this.#sealWith(this.#current, batch, i, length, to, kind);
  }

  /** Once per batch before {@linkcode sealFrame}: `now`, the time in seconds, for key changes. */
  startBatch(now: number): void {
    if (now >= this.#announceAt) this.#tick(now);
  }

  /**
   * Seals frame i of `batch` (`length` bytes) in place with the current key,
   * for the group or, with `addresses`, for the socket address at `offset`
   * of it: what {@linkcode seal} does, for the data path. Neither the time
   * nor the 32-bit destination tag is an argument, as V8 boxes (allocates)
   * a number that is no small integer when it passes it to a call.
   */
  sealFrame(
    batch: FrameBatch,
    i: number,
    length: number,
    addresses?: Uint8Array,
    offset = 0,
  ): boolean {
    this.#addressAt(batch.bytes, i * SLOT_SIZE + HEADROOM - SEALED_PREFIX, addresses, offset);
    return this.#sealTo(this.#current, batch, i, length, Kind.frame);
  }

  /**
   * Writes where the datagram at `at` of `bytes` goes: the group's tag, or
   * that of the socket address at `offset` of `addresses`.
   */
  #addressAt(bytes: Uint8Array, at: number, addresses: Uint8Array | undefined, offset: number) {
    if (addresses === undefined) writeUint32(bytes, at + TO_AT, this.groupTag);
    else writeDestinationTag(bytes, at + TO_AT, addresses, offset);
  }

  #sealWith(
    key: TrafficKey,
    batch: FrameBatch,
    i: number,
    length: number,
    to: number,
    kind: number,
  ): boolean {
    writeUint32(batch.bytes, i * SLOT_SIZE + HEADROOM - SEALED_PREFIX + TO_AT, to);
    return this.#sealTo(key, batch, i, length, kind);
  }

  /** {@linkcode #sealWith} once the destination tag is in place. */
  #sealTo(key: TrafficKey, batch: FrameBatch, i: number, length: number, kind: number): boolean {
    const at = i * SLOT_SIZE + HEADROOM - SEALED_PREFIX;
    return this.#sealAt(key, batch.bytes, this.#parts.of(batch), i, at, length, kind);
  }

  /** Seals the datagram at `at` of `bytes`, in slot i, whose parts `parts` points at. */
  #sealAt(
    key: TrafficKey,
    bytes: Uint8Array,
    parts: PieceParts,
    i: number,
    at: number,
    length: number,
    kind: number,
  ): boolean {
    writeUint32(bytes, at + KIND_AT, ((kind << 24) | key.id) >>> 0);
    writeUint32(bytes, at + SENDER_AT, this.senderId);
    writeUint32(bytes, at + SEQUENCE_AT, this.#sequenceHigh);
    writeUint32(bytes, at + SEQUENCE_AT + 4, this.#sequenceLow);
    if (++this.#sequenceLow === TWO_32) {
      this.#sequenceLow = 0;
      this.#sequenceHigh = (this.#sequenceHigh + 1) >>> 0;
    }
    return key.sealing.seal(
      parts.sealing.arm[i],
      parts.aad[i],
      AAD_SIZE,
      parts.frame[i],
      length,
      parts.sealing.tag[i],
    );
  }

  /**
   * Frames longer than `largest` bytes are to be cut into pieces (see the
   * module's text): the longest frame a datagram carries on the route.
   */
  setPieceLimit(largest: number): void {
    this.#pieceLimit = largest;
  }

  /** Frames longer than this go in pieces: {@linkcode MAX_FRAME} (none) until the route is known. */
  get pieceLimit(): number {
    return this.#pieceLimit;
  }

  /**
   * Cuts frame i of `batch` (`length` bytes, whole in its slot, longer than
   * the piece limit) into {@linkcode pieces} (each datagram's length is
   * {@linkcode pieceDatagram}), and seals each in place as a
   * datagram of its own, for the group or, with `addresses`, for the socket
   * address at `offset` of it: piece k's datagram starts `k * stride` bytes
   * after the frame's (see {@linkcode pieceStride}), where the frame's bytes
   * are moved to. False, with nothing sealed, when the frame is not longer
   * than the limit, when the pieces do not fit the slot (a jumbo frame on a
   * narrow route), or when a seal failed.
   */
  sealPieces(
    batch: FrameBatch,
    i: number,
    length: number,
    addresses?: Uint8Array,
    offset = 0,
  ): boolean {
    const limit = this.#pieceLimit, stride = this.pieceStride;
    if (length <= limit) return false;
    const count = Math.ceil(length / limit);
    // The last piece lies `count - 1` strides into the slot, as the limit fixes each piece's
    // place: pieces of equal length leave `limit - size` bytes free after each, which a jumbo
    // frame's slot may not afford; full pieces then, the last shorter.
    const room = SLOT_SIZE - HEADROOM - (count - 1) * stride;
    let size = Math.ceil(length / count);
    if (length - (count - 1) * size > room) size = limit;
    const last = length - (count - 1) * size;
    if (last > room) return false;
    this.pieces = count;
    this.#pieceLength = size;
    this.#lastPieceLength = last;
    const bytes = batch.bytes;
    const frame = i * SLOT_SIZE + HEADROOM;
    for (let k = count - 1; k > 0; k--) {
      const from = frame + k * size;
      bytes.copyWithin(frame + k * stride, from, from + (k === count - 1 ? last : size));
    }
    const pieceParts = this.#pieceParts.of(batch);
    const key = this.#current;
    for (let k = 0; k < count; k++) {
      const at = frame - SEALED_PREFIX + k * stride;
      if (k > 0) bytes.set(this.#header, at);
      this.#addressAt(bytes, at, addresses, offset);
      const parts = k === 0 ? this.#parts.of(batch) : this.#piecePartsOf(batch, pieceParts, k);
      const kind = k === 0 ? Kind.firstPiece : k === count - 1 ? Kind.lastPiece : Kind.piece;
      if (!this.#sealAt(key, bytes, parts, i, at, k === count - 1 ? last : size, kind)) {
        return false;
      }
    }
    return true;
  }

  /**
   * How far apart the datagrams of a cut frame lie in its slot (see
   * {@linkcode sealPieces}): a prefix and the longest piece.
   */
  get pieceStride(): number {
    return SEALED_PREFIX + this.#pieceLimit;
  }

  /** The length of the datagram of piece k of the frame {@linkcode sealPieces} cut last. */
  pieceDatagram(k: number): number {
    return SEALED_PREFIX + (k === this.pieces - 1 ? this.#lastPieceLength : this.#pieceLength);
  }

  #piecePartsOf(batch: FrameBatch, made: PieceParts[], k: number): PieceParts {
    while (made.length < k) {
      const start = HEADROOM - SEALED_PREFIX + (made.length + 1) * this.pieceStride;
      const [aad, frame] = slotPointers(batch.bytes, SLOT_SIZE, batch.capacity, [
        start,
        start + SEALED_PREFIX,
      ]);
      const sealing = gcmSlots(
        batch.bytes,
        SLOT_SIZE,
        batch.capacity,
        start + SENDER_AT,
        start + TAG_AT,
        true,
      );
      made.push({ aad, frame, sealing });
    }
    return made[k - 1];
  }

  /**
   * Opens the sealed datagram in slot i, whose payload is `length` bytes,
   * received from `source`: checks where it was sent, its key, its sender and
   * the replay window, decrypts in place and verifies. Returns a
   * {@linkcode Verdict}. `now` is the time in seconds.
   */
  open(batch: FrameBatch, i: number, length: number, now: number, source: DatagramSource): number {
    if (now >= this.#announceAt) this.#tick(now);
    const bytes = batch.bytes;
    const at = i * SLOT_SIZE + HEADROOM - SEALED_PREFIX;
    const word = readUint32(bytes, at + KIND_AT);
    const kind = word >>> 24, id = word & 0xffffff;
    const key = this.#keyWithId(id);
    if (key === undefined) return Verdict.unknownKey;
    const sender = readUint32(bytes, at + SENDER_AT);
    if (sender === this.senderId) return Verdict.own;
    const to = readUint32(bytes, at + TO_AT);
    // The group's tag is good on either socket: `peers=` copies group datagrams to members.
    if (to !== this.groupTag && (source.fromGroup || !this.#isLocal(to, now))) {
      return Verdict.misdirected;
    }
    const high = readUint32(bytes, at + SEQUENCE_AT);
    const low = readUint32(bytes, at + SEQUENCE_AT + 4);
    let peer = sender === this.#lastSenderId ? this.#lastSender : this.#senders.get(sender);
    if (peer !== undefined) {
      this.#lastSender = peer;
      this.#lastSenderId = sender;
    }
    const here = peer !== undefined && sameAddress(peer.address, source.names, source.offset);
    // Old for its sender is a replay, from wherever it comes.
    if (peer?.proven && kind !== Kind.hello && !peer.window.fresh(high, low)) {
      return Verdict.replayed;
    }
    const parts = this.#parts.of(batch);
    const authentic = key.opening.open(
      parts.opening.arm[i],
      parts.aad[i],
      AAD_SIZE,
      parts.frame[i],
      length,
    );
    if (!authentic) return Verdict.forged;
    key.lastOpened = now;
    // Hellos, proofs and unproven senders are rare: time them with the clock itself, as the
    // caller's `now` may lag by a second, which would hold back the answers a new member waits for.
    if (kind === Kind.hello) {
      if (length !== NONCE_SIZE) return Verdict.forged;
      this.#answer(peer, sender, bytes, at + SEALED_PREFIX, source, Date.now() / 1000);
      return Verdict.control;
    }
    if (kind === Kind.proof) {
      const clock = Date.now() / 1000;
      if (length !== NONCE_SIZE) return Verdict.forged;
      const nonce = bytes.subarray(at + SEALED_PREFIX, at + SEALED_PREFIX + NONCE_SIZE);
      const answersUs = peer?.nonce !== undefined && clock - peer.nonceAt < NONCE_SECONDS &&
        equalBytes(peer.nonce, nonce) && sameAddress(peer.challenged, source.names, source.offset);
      const answersGreeting = clock - this.#greetedAt < GREETING_SECONDS &&
        equalBytes(this.#groupNonce, nonce);
      if (!answersUs && !answersGreeting) return Verdict.replayed;
      // Newer than anything seen from this sender (a goodbye keeps its window): alive there now.
      if (peer && !peer.window.fresh(high, low)) return Verdict.replayed;
      peer ??= this.#remember(sender, now);
      setAddress(peer.address, source.names, source.offset);
      peer.window.startAt(high, low, now);
      peer.proven = true;
      peer.nonce = undefined;
      peer.challengedAt = -Infinity; // answered: the next change of address may be asked at once
      if (key === this.#next) this.#sawNext(peer, now);
      return Verdict.control;
    }
    if (!peer?.proven || !here) {
      peer ??= this.#remember(sender, now);
      this.#challenge(peer, source, Date.now() / 1000);
      return Verdict.unproven;
    }
    peer.window.accept(high, low, now);
    if (key === this.#next) this.#sawNext(peer, now);
    if (kind >= Kind.firstPiece && kind <= Kind.lastPiece) {
      return this.#takePiece(peer, kind, bytes, at + SEALED_PREFIX, length, high, low);
    }
    if (kind !== Kind.frame) return Verdict.control;
    // A goodbye: the sender must prove itself again, after all it sent so far.
    if (length === 0) peer.proven = false;
    return Verdict.ok;
  }

  /**
   * Opens datagram k of a received run in place, where it arrived: the
   * datagrams are `stride` bytes apart from `at` of `bytes`, this one's
   * payload `length` bytes, all from `source`. Only a frame (not a goodbye)
   * from a proven sender at its address, fresh, for us, is opened here:
   * returns {@linkcode Verdict.ok} when it was authentic (its sequence number
   * is then seen), {@linkcode Verdict.forged} when it was not (its payload is
   * garbage then, and opening it again fails), and -1, with nothing done,
   * for anything else, which {@linkcode open} is to take on its own.
   */
  openInRun(
    bytes: Uint8Array<ArrayBuffer>,
    at: number,
    stride: number,
    k: number,
    length: number,
    now: number,
    source: DatagramSource,
  ): number {
    if (now >= this.#announceAt) this.#tick(now);
    const start = at + k * stride;
    const word = readUint32(bytes, start + KIND_AT);
    if (word >>> 24 !== Kind.frame || length === 0) return -1;
    const id = word & 0xffffff;
    const key = this.#keyWithId(id);
    if (key === undefined) return -1;
    const sender = readUint32(bytes, start + SENDER_AT);
    if (sender === this.senderId) return -1;
    const peer = sender === this.#lastSenderId ? this.#lastSender : this.#senders.get(sender);
    if (peer !== undefined) {
      this.#lastSender = peer;
      this.#lastSenderId = sender;
    }
    const to = readUint32(bytes, start + TO_AT);
    if (to !== this.groupTag && (source.fromGroup || !this.#isLocal(to, now))) return -1;
    if (
      peer === undefined || !peer.proven || !sameAddress(peer.address, source.names, source.offset)
    ) return -1;
    const high = readUint32(bytes, start + SEQUENCE_AT);
    const low = readUint32(bytes, start + SEQUENCE_AT + 4);
    if (!peer.window.fresh(high, low)) return -1;
    const parts = this.#runPartsOf(bytes, at, stride, k + 1);
    if (!key.opening.open(parts.opening.arm[k], parts.aad[k], AAD_SIZE, parts.frame[k], length)) {
      return Verdict.forged;
    }
    key.lastOpened = now;
    peer.window.accept(high, low, now);
    if (key === this.#next) this.#sawNext(peer, now);
    return Verdict.ok;
  }

  /**
   * Keeps a piece of `length` bytes at `payload` of `bytes`, authentic and
   * fresh, from `peer`, or with the pieces kept before it makes its frame
   * whole where it is: the frame is then moved to start at `payload`.
   *
   * A frame that lost a piece is {@linkcode Verdict.incomplete} once, where
   * the sender's run of pieces breaks: its later pieces, up to its last, are
   * dropped without counting it again. (Two frames that lost pieces back to
   * back may count once, and a frame whose last piece came before its first
   * twice.)
   */
  #takePiece(
    peer: Sender,
    kind: number,
    bytes: Uint8Array,
    payload: number,
    length: number,
    high: number,
    low: number,
  ): number {
    if (peer.broken && kind !== Kind.firstPiece) {
      if (kind === Kind.lastPiece) peer.broken = false;
      return Verdict.piece; // a piece of a frame counted when it broke
    }
    const kept = peer.piecesLength;
    const follows = kept > 0 && high === peer.nextPieceHigh && low === peer.nextPieceLow;
    if (kind === Kind.lastPiece) {
      // Pieces kept that this one does not follow may still be followed by their own.
      if (!follows) return Verdict.incomplete;
      peer.piecesLength = 0;
      if (length === 0 || kept + length > MAX_FRAME) return Verdict.incomplete;
      bytes.copyWithin(payload + kept, payload, payload + length);
      bytes.set(peer.pieces!.subarray(0, kept), payload);
      this.joinedLength = kept + length;
      return Verdict.joined;
    }
    peer.nextPieceLow = low === TWO_32 - 1 ? 0 : low + 1;
    peer.nextPieceHigh = low === TWO_32 - 1 ? (high + 1) >>> 0 : high;
    if (kind === Kind.firstPiece) {
      // A first piece starts a frame, dropping one that never got its last piece.
      peer.broken = false;
      peer.piecesLength = 0;
      if (length === 0 || length > MAX_FRAME) return Verdict.incomplete;
      (peer.pieces ??= new Uint8Array(MAX_FRAME)).set(bytes.subarray(payload, payload + length));
      peer.piecesLength = length;
      return kept > 0 ? Verdict.incomplete : Verdict.piece;
    }
    // A piece between must follow the kept ones: else the frame they or it belong to lost one.
    if (!follows || length === 0 || kept + length > MAX_FRAME) {
      peer.piecesLength = 0;
      peer.broken = true;
      return Verdict.incomplete;
    }
    peer.pieces!.set(bytes.subarray(payload, payload + length), kept);
    peer.piecesLength = kept + length;
    return Verdict.piece;
  }

  #runPartsOf(bytes: Uint8Array<ArrayBuffer>, at: number, stride: number, count: number): RunParts {
    const made = this.#runParts.get(at);
    if (
      made !== undefined && made.bytes === bytes && made.stride === stride && made.count >= count
    ) {
      return made;
    }
    const fits = Math.floor((bytes.length - at - SEALED_PREFIX) / stride) + 1;
    const wanted = Math.min(Math.max(count, RUN_DATAGRAMS), fits);
    const [aad, frame] = slotPointers(bytes, stride, wanted, [at, at + SEALED_PREFIX]);
    const opening = gcmSlots(bytes, stride, wanted, at + SENDER_AT, at + TAG_AT, false);
    const parts = { bytes, stride, count: wanted, aad, frame, opening };
    this.#runParts.set(at, parts);
    return parts;
  }

  #isLocal(tag: number, now: number): boolean {
    if (tag === this.#lastLocalTag) return true;
    if (
      this.#localTags.has(tag) || (this.#refreshLocalTags(now) && this.#localTags.has(tag))
    ) {
      this.#lastLocalTag = tag;
      return true;
    }
    return false;
  }

  /** Answers a hello with a proof, and challenges its sender back if it is not proven there. */
  #answer(
    peer: Sender | undefined,
    sender: number,
    bytes: Uint8Array,
    nonceAt: number,
    source: DatagramSource,
    now: number,
  ): void {
    peer ??= this.#remember(sender, now);
    const nonce = bytes.subarray(nonceAt, nonceAt + NONCE_SIZE);
    // The same hello again (replayed, or resent) is answered at most every ANSWER_INTERVAL.
    const same = peer.answered !== undefined && equalBytes(peer.answered, nonce);
    if (same && now - peer.answeredAt < ANSWER_INTERVAL) return;
    peer.answeredAt = now;
    peer.answered = nonce.slice();
    const to = source.names.slice(source.offset, source.offset + 32);
    this.#queue(Kind.proof, bytes.subarray(nonceAt, nonceAt + NONCE_SIZE), to, this.#current);
    if (!peer.proven || !sameAddress(peer.address, source.names, source.offset)) {
      this.#challenge(peer, source, now);
    }
  }

  /**
   * Sends `peer` a hello at the source address, at most every
   * CHALLENGE_INTERVAL whatever the address (so replays from elsewhere cannot
   * multiply them). A proven sender keeps its address until it answers at the
   * new one.
   */
  #challenge(peer: Sender, source: DatagramSource, now: number): void {
    if (now - peer.challengedAt < CHALLENGE_INTERVAL) return;
    // A hello may be lost, or answered while the next is on its way: ask again with the same
    // nonce, at the same address, for a little while.
    const again = peer.nonce !== undefined && now - peer.nonceAt < NONCE_SECONDS &&
      sameAddress(peer.challenged, source.names, source.offset);
    peer.challengedAt = now;
    if (!again) {
      setAddress(peer.challenged, source.names, source.offset);
      peer.nonce = randomBytes(new Uint8Array(NONCE_SIZE));
      peer.nonceAt = now;
    }
    const to = source.names.slice(source.offset, source.offset + 32);
    this.#queue(Kind.hello, peer.nonce!, to, this.#current);
  }

  /**
   * Queues the hello a plug sends to the group when it opens: every member
   * answers it (for {@linkcode GREETING_SECONDS}) and challenges it back.
   */
  greet(now: number): void {
    this.#greetedAt = now;
    this.#queue(Kind.hello, this.#groupNonce, undefined, this.#current);
  }

  #queue(
    kind: number,
    payload: Uint8Array,
    to: Uint8Array<ArrayBuffer> | undefined,
    key: TrafficKey,
  ) {
    const batch = this.#control ??= new FrameBatch(1);
    const start = HEADROOM - SEALED_PREFIX;
    batch.bytes.set(this.#header, start);
    batch.bytes.set(payload, HEADROOM);
    const tag = to === undefined ? this.groupTag : destinationTag(to, 0);
    if (!this.#sealWith(key, batch, 0, payload.length, tag, kind)) return;
    this.#outgoing.push({
      datagram: batch.bytes.slice(start, HEADROOM + payload.length),
      to,
    });
    this.#outgoingCount++;
  }

  /** Control datagrams to send, oldest first; the list is emptied. */
  takeOutgoing(): Outgoing[] {
    if (this.#outgoingCount === 0) return NO_OUTGOING;
    const taken = this.#outgoing;
    this.#outgoing = [];
    this.#outgoingCount = 0;
    return taken;
  }

  /** Whether control datagrams wait in {@linkcode takeOutgoing}. */
  get hasOutgoing(): boolean {
    return this.#outgoingCount > 0;
  }

  /**
   * Takes a new secret (zeroed by the caller): its key opens datagrams at
   * once and seals them once the members have it (see the module header).
   */
  reload(secret: Uint8Array<ArrayBuffer>, now: number): ReloadResult {
    const key = new TrafficKey(secret, this.#place, now);
    if (key.id === this.#current.id || key.id === this.#next?.id) {
      key.close();
      if (key.id === this.#current.id && this.#next) {
        // Back to the key in use: forget the one that was coming.
        this.#next.close();
        this.#next = undefined;
      }
      return "unchanged";
    }
    if (this.#next) this.#next.close();
    if (key.id === this.#previous?.id) {
      this.#previous.close();
      this.#previous = undefined;
    }
    this.#next = key;
    this.#nextSince = now;
    for (const peer of this.#senders.values()) peer.hasNext = false;
    this.#queue(Kind.have, EMPTY, undefined, key);
    this.#announceAt = now + 1;
    this.#maybeSwitch(now);
    return "new key loaded";
  }

  #sawNext(peer: Sender, now: number): void {
    if (peer.hasNext) return;
    peer.hasNext = true;
    this.#maybeSwitch(now);
  }

  /** Switches to the next key once every active member has it, or its time is up. */
  #maybeSwitch(now: number): void {
    const next = this.#next;
    if (!next) return;
    if (now - this.#nextSince < SWITCH_SECONDS) {
      for (const peer of this.#senders.values()) {
        if (peer.proven && !peer.hasNext && now - peer.window.lastSeen < ACTIVE_SECONDS) return;
      }
    }
    this.#previous?.close();
    this.#previous = this.#current;
    this.#previous.lastOpened = now;
    this.#current = next;
    this.#next = undefined;
    this.#switchedAt = now;
    this.#announceAt = now + 1;
    this.onEvent?.(`sealing with the new key ${hexId(next.id)} now`);
  }

  /** The key, current, next or previous, whose id a datagram names; undefined when none. */
  #keyWithId(id: number): TrafficKey | undefined {
    if (id === this.#current.id) return this.#current;
    if (id === this.#next?.id) return this.#next;
    if (id === this.#previous?.id) return this.#previous;
    return undefined;
  }

  /** Once a second while a key change is under way: announce the next key, switch, retire. */
  #tick(now: number): void {
    this.#announceAt = now + 1;
    if (this.#next) {
      this.#queue(Kind.have, EMPTY, undefined, this.#next);
      this.#maybeSwitch(now);
    } else if (
      this.#previous && now - this.#switchedAt >= RETIRE_SECONDS &&
      now - this.#previous.lastOpened >= RETIRE_SECONDS
    ) {
      this.onEvent?.(`retired the old key ${hexId(this.#previous.id)}`);
      this.#previous.close();
      this.#previous = undefined;
    }
    if (!this.#next && !this.#previous) this.#announceAt = Infinity;
  }

  #remember(sender: number, now: number): Sender {
    if (this.#senders.size >= MAX_SENDERS) {
      for (const [id, old] of this.#senders) {
        if (now - old.window.lastSeen > 2 * ACTIVE_SECONDS) this.#senders.delete(id);
      }
      // Still full: forget the earliest remembered (Map keeps insertion order).
      for (const id of this.#senders.keys()) {
        if (this.#senders.size < MAX_SENDERS) break;
        this.#senders.delete(id);
      }
    }
    const peer = new Sender();
    peer.window.lastSeen = now;
    this.#senders.set(sender, peer);
    this.#lastSender = undefined;
    this.#lastSenderId = NO_ID;
    return peer;
  }

  /** How many senders are proven. */
  get knownSenders(): number {
    let count = 0;
    for (const peer of this.#senders.values()) if (peer.proven) count++;
    return count;
  }

  /** Frees the cipher contexts. */
  close(): void {
    this.#current.close();
    this.#next?.close();
    this.#previous?.close();
  }
}

const EMPTY = new Uint8Array(0);
const NO_OUTGOING: Outgoing[] = [];

function hexId(id: number): string {
  return id.toString(16).padStart(6, "0");
}

/** Whether the sockaddr `stored` (24 bytes) is the one at `offset` of `names`. */
function sameAddress(stored: Uint8Array, names: Uint8Array, offset: number): boolean {
  const length = (names[offset] | (names[offset + 1] << 8)) === AF_INET ? 8 : 24;
  for (let k = 0; k < length; k++) if (stored[k] !== names[offset + k]) return false;
  return true;
}

function setAddress(stored: Uint8Array, names: Uint8Array, offset: number): void {
  stored.fill(0);
  const length = (names[offset] | (names[offset + 1] << 8)) === AF_INET ? 8 : 24;
  stored.set(names.subarray(offset, offset + length));
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let k = 0; k < a.length; k++) difference |= a[k] ^ b[k];
  return difference === 0;
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
