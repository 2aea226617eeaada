/**
 * What a NIC does for a TAP with offloads: completing the checksums the
 * kernel left open, and cutting TCP super-frames (TSO) into frames of one
 * segment each, so that what leaves vdeno is ordinary Ethernet.
 *
 * Headers are read through DataViews: any alignment, network byte order, and
 * no allocation per frame. Payloads are summed in WebAssembly
 * (core/checksum.ts), which is why segments are cut into, and merged from,
 * checksum areas such as a FrameBatch.
 *
 * @module
 */

import type { ChecksumArea } from "../core/checksum.ts";
import { type FrameBatch, HELD_WORDS, SLOT_SIZE } from "../core/frames.ts";
import { tapTakesUdpSegments } from "../ffi/tap.ts";

/** Bytes of the virtio-net header before each frame (struct virtio_net_hdr). */
export const VNET_HEADER = 10;
/** Header flag: the checksum from csum_start to the end is still to be computed. */
export const NEEDS_CSUM = 1;
/** Header gso_type of an ordinary frame. */
export const GSO_NONE = 0;
/** Header gso_type of a TCP over IPv4 super-frame. */
export const GSO_TCPV4 = 1;
const GSO_TCPV6 = 4;
/** Header gso_type of a UDP super-datagram (Linux 6.2 and later). */
export const GSO_UDP_L4 = 5;
const GSO_ECN = 0x80;

/**
 * struct virtio_net_hdr, the header a TAP with IFF_VNET_HDR puts before each
 * frame (its 16-bit fields little-endian): decoded into and encoded from one
 * reused object, so the data path allocates nothing.
 */
export class VnetHeader {
  /** NEEDS_CSUM or 0. */
  flags = 0;
  /** GSO_NONE, or the kind of super-frame (TCP over IPv4 or IPv6, ECN bit). */
  gsoType = GSO_NONE;
  /** Bytes of the Ethernet, IP and TCP headers of a super-frame. */
  headerLength = 0;
  /** Payload bytes of each segment a super-frame is cut into. */
  gsoSize = 0;
  /** Where the checksummed part starts, from the start of the frame. */
  csumStart = 0;
  /** Where the checksum field is, from csumStart. */
  csumOffset = 0;

  /** Reads the header at `at` of `view`. */
  decode(view: DataView, at: number): this {
    this.flags = view.getUint8(at);
    this.gsoType = view.getUint8(at + 1);
    this.headerLength = view.getUint16(at + 2, true);
    this.gsoSize = view.getUint16(at + 4, true);
    this.csumStart = view.getUint16(at + 6, true);
    this.csumOffset = view.getUint16(at + 8, true);
    return this;
  }

  /** Writes this header at `at` of `view`. */
  encode(view: DataView, at: number): void {
    view.setUint8(at, this.flags);
    view.setUint8(at + 1, this.gsoType);
    view.setUint16(at + 2, this.headerLength, true);
    view.setUint16(at + 4, this.gsoSize, true);
    view.setUint16(at + 6, this.csumStart, true);
    view.setUint16(at + 8, this.csumOffset, true);
  }

  /** Writes the header of an ordinary frame (all zero) at `at` of `view`. */
  static clear(view: DataView, at: number): void {
    view.setUint32(at, 0);
    view.setUint32(at + 4, 0);
    view.setUint16(at + 8, 0);
  }
}

/** The header writeMerged writes, reused. */
const merged = new VnetHeader();

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const ETHERTYPE_QINQ = 0x88a8;
const PROTOCOL_TCP = 6;
const PROTOCOL_UDP = 17;
const UDP_CHECKSUM_AT = 6;
const TCP_CHECKSUM_AT = 16;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

/** Adds the big-endian 16-bit words of [start, end) to `sum`, unfolded; an odd last byte is padded. */
export function addWords(view: DataView, start: number, end: number, sum: number): number {
  let i = start;
  // A 32-bit word is two 16-bit words: 65536 is 1 in one's complement arithmetic.
  for (; i + 4 <= end; i += 4) sum += view.getUint32(i);
  if (i + 2 <= end) {
    sum += view.getUint16(i);
    i += 2;
  }
  if (i < end) sum += view.getUint8(i) << 8;
  return sum;
}

/** The addresses of the IP header at `l3`: the part of a TCP or UDP pseudo-header that they are. */
function addressSum(view: DataView, l3: number, ipv4: boolean): number {
  return ipv4 ? addWords(view, l3 + 12, l3 + 20, 0) : addWords(view, l3 + 8, l3 + 40, 0);
}

/** Where the IP header of the frame at `start` begins: after the Ethernet header and any VLAN tag. */
function networkOffset(view: DataView, start: number): number {
  const ethertype = view.getUint16(start + 12);
  return ethertype === ETHERTYPE_VLAN || ethertype === ETHERTYPE_QINQ ? 18 : 14;
}

/** Folds an unfolded sum to 16 bits and complements it: the value of a checksum field. */
export function finishChecksum(sum: number): number {
  return ~foldSum(sum) & 0xffff;
}

/**
 * Folds an unfolded sum (a non-negative integer below 2 ** 53) to 16 bits,
 * not complemented; with `&`, not `%`, which V8 compiles to a call to fmod
 * on numbers beyond 32 bits.
 */
function foldSum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * Completes the checksum of a frame the kernel marked NEEDS_CSUM: it wrote the
 * pseudo-header's sum into the field, the rest is the sum from `csumStart` to
 * the end. Returns false when the offsets do not fit the frame.
 */
export function completeChecksum(
  view: DataView,
  frameStart: number,
  frameLength: number,
  csumStart: number,
  csumOffset: number,
): boolean {
  const field = csumStart + csumOffset;
  if (field + 2 > frameLength) return false;
  const sum = addWords(view, frameStart + csumStart, frameStart + frameLength, 0);
  view.setUint16(frameStart + field, checksumField(sum, csumOffset === UDP_CHECKSUM_AT));
  return true;
}

/** The checksum field for an unfolded sum; a UDP checksum of 0 is sent as 0xffff (0: "none"). */
function checksumField(sum: number, udp: boolean): number {
  const value = finishChecksum(sum);
  return value === 0 && udp ? 0xffff : value;
}

/**
 * Cuts one TCP super-frame into segments, as TSO hardware does: the same
 * headers on each, the IPv4 length, identification and header checksum, the
 * IPv6 payload length, the sequence number, FIN and PSH on the last segment
 * only, CWR on the first only, and each segment's TCP checksum. A UDP
 * super-datagram (USO) is cut the same way into the datagrams it stands for,
 * each with its UDP length and checksum.
 */
export class Segmenter {
  readonly #maxFrame: number;
  /** The area the loaded super-frame is in, a view of it, and where in it the super-frame starts. */
  #source: Uint8Array = new Uint8Array(0);
  #view = new DataView(this.#source.buffer);
  #base = 0;
  #segmentLimit = Infinity;
  #length = 0;
  #headerLength = 0;
  #l3 = 0;
  #l4 = 0;
  #ipv4 = false;
  #udp = false;
  #mss = 0;
  #next = 0;
  #index = 0;
  #sequence = 0;
  #identification = 0;
  #lastSegmentCount = 0;
  #restAt = 0;
  /** The super-frame's TCP flags, the byte before them, its headers' sums less what segments set. */
  #flags = 0;
  #dataOffset = 0;
  #headerSum = 0;
  #ipSum = 0;

  constructor(maxFrame: number) {
    this.#maxFrame = maxFrame;
  }

  /**
   * Cuts segments into frames of at most `size` bytes even when the kernel's
   * segment size (the TAP's MTU) allows more: smaller TCP segments are valid,
   * and a frame that fits the underlay is not fragmented on the way.
   */
  fitTo(size: number): void {
    this.#segmentLimit = size;
  }

  /**
   * Whether an ordinary frame of `length` bytes should be cut like a
   * super-frame: a TCP segment the kernel sent whole (a connection's first
   * flight, a retransmission) that is larger than the size segments fit.
   */
  tooLargeToFit(length: number, csumOffset: number): boolean {
    return length > this.#segmentLimit && csumOffset === TCP_CHECKSUM_AT;
  }

  /** Takes a whole TCP segment to be cut to fit, as {@linkcode load} takes a super-frame. */
  loadSegment(from: ChecksumArea, start: number, length: number, csumStart: number): boolean {
    const view = this.#viewOf(from);
    const ethertype = view.getUint16(start + networkOffset(view, start) - 2);
    const type = ethertype === ETHERTYPE_IPV4 ? GSO_TCPV4 : GSO_TCPV6;
    return this.load(from, start, length, type, length, csumStart);
  }

  /** A view of `from`'s bytes: the last one made while the super-frames come from one area. */
  #viewOf(from: ChecksumArea): DataView {
    if (from.bytes !== this.#source) {
      this.#source = from.bytes;
      this.#view = new DataView(from.bytes.buffer, from.bytes.byteOffset, from.bytes.byteLength);
    }
    return this.#view;
  }

  /** How many segments the super-frame loaded last was cut into, or is being cut into. */
  get lastSegmentCount(): number {
    return this.#lastSegmentCount;
  }

  /** True while segments of the loaded super-frame are left. */
  get pending(): boolean {
    return this.#next < this.#length;
  }

  /**
   * Takes the super-frame at `start` of `from` (`length` bytes), with its
   * header's gso_type, gso_size and csum_start; it must stay there until its
   * last segment is cut. Returns false, and takes nothing, when it is not a
   * TCP or UDP super-frame that can be cut into frames of at most `maxFrame`
   * bytes.
   */
  load(
    from: ChecksumArea,
    start: number,
    length: number,
    gsoType: number,
    gsoSize: number,
    csumStart: number,
  ): boolean {
    this.#length = 0;
    const view = this.#viewOf(from);
    const type = gsoType & ~GSO_ECN;
    const udp = type === GSO_UDP_L4;
    const protocol = udp ? PROTOCOL_UDP : PROTOCOL_TCP;
    if (start + length > from.bytes.length || length < 14 + 40) return false;
    const l3 = networkOffset(view, start);
    const ethertype = view.getUint16(start + l3 - 2);
    const ipv4 = ethertype === ETHERTYPE_IPV4 && (type === GSO_TCPV4 || udp);
    if (ipv4) {
      const version = view.getUint8(start + l3) >> 4;
      const headerLength = (view.getUint8(start + l3) & 15) * 4;
      if (version !== 4 || headerLength < 20 || l3 + headerLength !== csumStart) return false;
      if (view.getUint8(start + l3 + 9) !== protocol) return false;
    } else if (
      ethertype !== ETHERTYPE_IPV6 || (type !== GSO_TCPV6 && !udp) || csumStart < l3 + 40
    ) {
      return false;
    } else if (csumStart === l3 + 40 && view.getUint8(start + l3 + 6) !== protocol) {
      return false; // with extension headers between, csum_start alone says where TCP or UDP is
    }
    const l4 = csumStart;
    if (l4 + (udp ? 8 : 20) > length) return false;
    const headerLength = udp ? l4 + 8 : l4 + (view.getUint8(start + l4 + 12) >> 4) * 4;
    if ((!udp && headerLength < l4 + 20) || headerLength >= length) return false;
    if (gsoSize === 0 || headerLength + gsoSize > this.#maxFrame) return false;
    this.#l3 = l3;
    this.#l4 = l4;
    this.#ipv4 = ipv4;
    this.#udp = udp;
    this.#headerLength = headerLength;
    this.#base = start;
    // Never below 512 bytes of payload: on a path that narrow, fragments are cheaper. A UDP
    // datagram keeps its size whatever the path: its bounds are the application's.
    this.#mss = udp ? gsoSize : Math.max(
      Math.min(gsoSize, this.#segmentLimit - headerLength),
      Math.min(gsoSize, 512),
    );
    this.#next = headerLength;
    this.#index = 0;
    this.#sequence = view.getUint32(start + l4 + 4);
    this.#identification = ipv4 ? view.getUint16(start + l3 + 4) : 0;
    this.#flags = view.getUint8(start + l4 + 13);
    this.#dataOffset = view.getUint8(start + l4 + 12);
    // What every segment's checksums add up from: the headers' sums less the fields each segment
    // sets (lengths, identification, sequence number, flags, checksums), once per super-frame.
    const transportPart = udp
      ? view.getUint16(start + l4) + view.getUint16(start + l4 + 2) // the ports
      : addWords(view, start + l4, start + headerLength, 0) -
        view.getUint16(start + l4 + 4) - view.getUint16(start + l4 + 6) -
        view.getUint16(start + l4 + 12) - view.getUint16(start + l4 + TCP_CHECKSUM_AT);
    this.#headerSum = foldSum(addressSum(view, start + l3, ipv4) + protocol + transportPart);
    this.#ipSum = ipv4
      ? foldSum(
        addWords(view, start + l3, start + l4, 0) - view.getUint16(start + l3 + 2) -
          view.getUint16(start + l3 + 4) - view.getUint16(start + l3 + 10),
      )
      : 0;
    this.#length = length;
    this.#lastSegmentCount = Math.ceil((length - headerLength) / this.#mss);
    return true;
  }

  /**
   * Writes the next segment as a frame at `offset` of `out` (`view` is a view
   * of the same bytes); returns its length.
   */
  next(out: ChecksumArea, view: DataView, offset: number): number {
    const headerLength = this.#headerLength;
    const payload = Math.min(this.#mss, this.#length - this.#next);
    const payloadStart = offset + headerLength;
    const base = this.#base;
    const from = base + this.#next;
    if (out.bytes === this.#source) {
      out.bytes.copyWithin(offset, base, base + headerLength);
      out.bytes.copyWithin(payloadStart, from, from + payload);
    } else { // a super-frame cut into another area than its own: tests, and never on the data path
      out.bytes.set(this.#source.subarray(base, base + headerLength), offset);
      out.bytes.set(this.#source.subarray(from, from + payload), payloadStart);
    }
    const sum = this.#writeHeaders(view, offset, payload) +
      out.sum(payloadStart, payloadStart + payload);
    this.#writeChecksum(view, offset, sum);
    return headerLength + payload;
  }

  /**
   * Writes the next segment's headers at `offset` of `out`, the area the
   * super-frame is in, and leaves its payload where it is, at
   * {@linkcode restAt}: the frame is split, its first
   * {@linkcode headerLength} bytes at `offset`, the rest in the super-frame.
   * Returns the frame's length.
   */
  nextHead(out: ChecksumArea, view: DataView, offset: number): number {
    const headerLength = this.#headerLength;
    const payload = Math.min(this.#mss, this.#length - this.#next);
    const base = this.#base;
    const rest = base + this.#next;
    out.bytes.copyWithin(offset, base, base + headerLength);
    this.#restAt = rest;
    const sum = this.#writeHeaders(view, offset, payload) + out.sum(rest, rest + payload);
    this.#writeChecksum(view, offset, sum);
    return headerLength + payload;
  }

  /** Bytes of the headers before each segment's payload, of the super-frame loaded last. */
  get headerLength(): number {
    return this.#headerLength;
  }

  /** Where, in the super-frame's area, the payload of the segment {@linkcode nextHead} cut last is. */
  get restAt(): number {
    return this.#restAt;
  }

  /** Writes the TCP or UDP checksum of the segment at `offset` from its whole sum. */
  #writeChecksum(view: DataView, offset: number, sum: number): void {
    const udp = this.#udp;
    view.setUint16(
      offset + this.#l4 + (udp ? UDP_CHECKSUM_AT : TCP_CHECKSUM_AT),
      checksumField(sum, udp),
    );
  }

  /**
   * Sets the headers of the next segment, `payload` bytes, written at
   * `offset` of the super-frame's (ordinary headers: lengths, identification,
   * IPv4 checksum, sequence number, flags; a UDP length) and moves on to the
   * one after it. Returns the sum of its TCP or UDP checksum but the
   * payload's, which the caller adds before it writes the field.
   */
  #writeHeaders(view: DataView, offset: number, payload: number): number {
    const headerLength = this.#headerLength;
    const l3 = offset + this.#l3;
    const l4 = offset + this.#l4;
    const end = this.#next + payload;
    const index = this.#index;
    if (this.#ipv4) {
      const ipLength = headerLength - this.#l3 + payload;
      const identification = (this.#identification + index) & 0xffff;
      view.setUint16(l3 + 2, ipLength);
      view.setUint16(l3 + 4, identification);
      view.setUint16(l3 + 10, finishChecksum(this.#ipSum + ipLength + identification));
    } else {
      view.setUint16(l3 + 4, headerLength - this.#l3 - 40 + payload);
    }
    if (this.#udp) {
      const udpLength = headerLength - this.#l4 + payload;
      view.setUint16(l4 + 4, udpLength);
      this.#next = end;
      this.#index = index + 1;
      return this.#headerSum + udpLength + udpLength; // the pseudo-header's and the header's
    }
    const sequence = (this.#sequence + index * this.#mss) >>> 0; // modulo 2 ** 32
    view.setUint32(l4 + 4, sequence);
    let flags = this.#flags;
    if (end < this.#length) flags &= ~(TCP_FIN | TCP_PSH);
    if (index > 0) flags &= ~TCP_CWR;
    view.setUint8(l4 + 13, flags);
    this.#next = end;
    this.#index = index + 1;
    const tcpLength = headerLength - this.#l4 + payload;
    return this.#headerSum + tcpLength + (sequence >>> 16) + (sequence & 0xffff) +
      (this.#dataOffset << 8 | flags);
  }
}

const TCP_ACK = 0x10;
/** Whether runs of UDP datagrams are merged: only where the TAP takes them. */
export const MERGES_UDP = tapTakesUdpSegments();
/** The IPv4 fragment fields less DF: set on a fragment, which is never merged. */
const IPV4_FRAGMENT_BITS = 0x3fff;

/** Whether the TCP or UDP checksum of [l4, end) in a batch, with its pseudo-header, is valid. */
function validChecksum(
  batch: FrameBatch,
  view: DataView,
  l3: number,
  l4: number,
  end: number,
  protocol: number,
): boolean {
  const pseudo = addressSum(view, l3, view.getUint8(l3) >> 4 === 4);
  return finishChecksum(pseudo + protocol + (end - l4) + batch.sum(l4, end)) === 0;
}

/** Whether bytes [a, a + length) and [b, b + length) of `view` are equal, four at a time. */
function sameBytes(view: DataView, a: number, b: number, length: number): boolean {
  let i = 0;
  for (; i + 4 <= length; i += 4) if (view.getUint32(a + i) !== view.getUint32(b + i)) return false;
  for (; i < length; i++) if (view.getUint8(a + i) !== view.getUint8(b + i)) return false;
  return true;
}

/**
 * Where the `protocol` header of the untagged IP frame at `start`, `length`
 * bytes long, begins; -1 when it is not one that could start a run: an IPv4
 * header with options, a fragment, an IP length that disagrees with the
 * frame's, or a bad IPv4 header checksum.
 */
function transportOf(view: DataView, start: number, length: number, protocol: number): number {
  const ethertype = view.getUint16(start + 12);
  const l3 = start + 14;
  if (ethertype === ETHERTYPE_IPV4) {
    if (view.getUint8(l3) !== 0x45 || view.getUint8(l3 + 9) !== protocol) return -1;
    if ((view.getUint16(l3 + 6) & IPV4_FRAGMENT_BITS) !== 0) return -1;
    if (view.getUint16(l3 + 2) !== length - 14) return -1;
    if (finishChecksum(addWords(view, l3, l3 + 20, 0)) !== 0) return -1;
    return l3 + 20;
  }
  if (ethertype === ETHERTYPE_IPV6) {
    if (view.getUint8(l3) >> 4 !== 6 || view.getUint8(l3 + 6) !== protocol) return -1;
    if (view.getUint16(l3 + 4) !== length - 14 - 40) return -1;
    return l3 + 40;
  }
  return -1;
}

/**
 * Whether the Ethernet and IP headers of the frame at `next`, `length` bytes
 * long, follow those of the run's first frame at `start` as a kernel's
 * segmentation makes them: the same but for the length, and on IPv4 the
 * identification (`identification`) and the header checksum, which is valid.
 */
function followsHeaders(
  view: DataView,
  start: number,
  next: number,
  length: number,
  ipv4: boolean,
  identification: number,
): boolean {
  if (!sameBytes(view, start, next, 14)) return false;
  const l3 = start + 14, nl3 = next + 14;
  if (ipv4) {
    return view.getUint16(nl3) === view.getUint16(l3) && // version, header length, TOS
      view.getUint16(nl3 + 2) === length - 14 &&
      view.getUint16(nl3 + 4) === identification &&
      view.getUint16(nl3 + 6) === view.getUint16(l3 + 6) && // DF, no fragment
      view.getUint16(nl3 + 8) === view.getUint16(l3 + 8) && // TTL, protocol
      sameBytes(view, l3 + 12, nl3 + 12, 8) &&
      finishChecksum(addWords(view, nl3, nl3 + 20, 0)) === 0;
  }
  return view.getUint32(nl3) === view.getUint32(l3) && // version, class, flow label
    view.getUint16(nl3 + 4) === length - 14 - 40 &&
    view.getUint16(nl3 + 6) === view.getUint16(l3 + 6) && // next header, hop limit
    sameBytes(view, l3 + 8, nl3 + 8, 32);
}

/** What a scan found of the run it accepted, for {@linkcode writeMerged}. */
const found = {
  headerLength: 0,
  l4: 0,
  payload: 0,
  segment: 0,
  push: 0,
  ipv4: false,
  udp: false,
};

/**
 * Finds how many of `count` frames, the first at `start` of `batch`'s bytes
 * and each next one `stride` bytes further, make one run that Linux's own GRO
 * would merge: consecutive segments of one TCP stream (see `scanTcp`) or
 * datagrams of one UDP flow (see `scanUdp`; where {@linkcode MERGES_UDP}). Frame k is `lengths[from + k]`
 * bytes long, or without `lengths` `length` bytes (the last one
 * `lastLength`); a frame of length 0 is an empty slot, passed over. Returns
 * how many slots the run spans. Reads only; when more than one frame merge,
 * `found` says how.
 */
function scanRun(
  batch: FrameBatch,
  view: DataView,
  start: number,
  stride: number,
  count: number,
  lengths: Int32Array | null,
  from: number,
  length: number,
  lastLength: number,
): number {
  if (count < 2) return 1;
  run.start = start;
  run.stride = stride;
  run.count = count;
  run.lengths = lengths;
  run.from = from;
  run.length = length;
  run.lastLength = lastLength;
  const protocol = view.getUint8(start + (view.getUint16(start + 12) === ETHERTYPE_IPV4 ? 23 : 20));
  if (protocol === PROTOCOL_TCP) return scanTcp(batch, view);
  if (protocol === PROTOCOL_UDP && MERGES_UDP) return scanUdp(batch, view);
  return 1;
}

/** Where the frames {@linkcode scanRun} was given are: its arguments, for the scans. */
const run = {
  start: 0,
  stride: 0,
  count: 0,
  lengths: null as Int32Array | null,
  from: 0,
  length: 0,
  lastLength: 0,
};

/** The length of frame k of {@linkcode run}. */
function frameLength(k: number): number {
  const lengths = run.lengths;
  return lengths !== null
    ? lengths[run.from + k]
    : k === run.count - 1
    ? run.lastLength
    : run.length;
}

/**
 * {@linkcode scanRun} for TCP: the same addresses, ports, ACK, window and
 * options, sequence numbers in order, equal-sized segments but the last, ACK
 * or PSH only, each with a valid checksum.
 */
function scanTcp(batch: FrameBatch, view: DataView): number {
  const start = run.start, stride = run.stride, count = run.count;
  const firstLength = frameLength(0);
  if (firstLength < 14 + 20 + 20) return 1;
  const l4 = transportOf(view, start, firstLength, PROTOCOL_TCP);
  if (l4 < 0) return 1;
  const ipv4 = view.getUint16(start + 12) === ETHERTYPE_IPV4;
  const l3 = start + 14;
  const headerLength = l4 - start + (view.getUint8(l4 + 12) >> 4) * 4;
  const segment = firstLength - headerLength;
  if (headerLength < l4 - start + 20 || segment <= 0) return 1;
  if (view.getUint8(l4 + 13) !== TCP_ACK) return 1; // PSH, and anything but ACK, ends a stream
  if (!validChecksum(batch, view, l3, l4, start + firstLength, PROTOCOL_TCP)) return 1;

  const ipMax = 65535 - (headerLength - 14);
  let payload = segment;
  let expected = (view.getUint32(l4 + 4) + segment) >>> 0;
  let identification = ipv4 ? view.getUint16(l3 + 4) : 0;
  let push = 0;
  let merged = 1;
  for (let k = 1; k < count; k++) {
    const next = start + k * stride;
    const nextLength = frameLength(k);
    const nextSegment = nextLength - headerLength;
    if (nextSegment <= 0 || nextSegment > segment || payload + nextSegment > ipMax) break;
    identification = (identification + 1) & 0xffff;
    if (!followsHeaders(view, start, next, nextLength, ipv4, identification)) break;
    const nl4 = next + (l4 - start);
    const flags = view.getUint8(nl4 + 13);
    if (
      view.getUint32(nl4) !== view.getUint32(l4) || // ports
      view.getUint32(nl4 + 4) !== expected ||
      view.getUint32(nl4 + 8) !== view.getUint32(l4 + 8) || // ACK number
      view.getUint8(nl4 + 12) !== view.getUint8(l4 + 12) ||
      (flags & ~TCP_PSH) !== TCP_ACK ||
      view.getUint16(nl4 + 14) !== view.getUint16(l4 + 14) || // window
      !sameBytes(view, l4 + 20, nl4 + 20, headerLength - (l4 - start) - 20) ||
      !validChecksum(batch, view, next + 14, nl4, next + nextLength, PROTOCOL_TCP)
    ) break;
    payload += nextSegment;
    expected = (expected + nextSegment) >>> 0;
    merged++;
    if (flags & TCP_PSH || nextSegment < segment) {
      push = flags & TCP_PSH;
      break;
    }
  }
  found.headerLength = headerLength;
  found.l4 = l4 - start;
  found.payload = payload;
  found.segment = segment;
  found.push = push;
  found.ipv4 = ipv4;
  found.udp = false;
  return merged;
}

/**
 * {@linkcode scanRun} for UDP: the same addresses and ports, IPv4
 * identifications in order, equal-sized datagrams but the last, none shorter
 * than the first but the last, each with a valid checksum. A datagram sent
 * without a checksum (IPv4's 0) is not merged: the kernel would give each its
 * own when it cuts them apart again.
 */
function scanUdp(batch: FrameBatch, view: DataView): number {
  const start = run.start, stride = run.stride, count = run.count;
  const firstLength = frameLength(0);
  if (firstLength < 14 + 20 + 8) return 1;
  const l4 = transportOf(view, start, firstLength, PROTOCOL_UDP);
  if (l4 < 0) return 1;
  const ipv4 = view.getUint16(start + 12) === ETHERTYPE_IPV4;
  const headerLength = l4 - start + 8;
  const segment = firstLength - headerLength;
  if (segment <= 0 || view.getUint16(l4 + 4) !== firstLength - (l4 - start)) return 1;
  if (view.getUint16(l4 + UDP_CHECKSUM_AT) === 0) return 1;

  const ipMax = 65535 - (headerLength - 14);
  let payload = segment;
  let identification = ipv4 ? view.getUint16(start + 14 + 4) : 0;
  let frames = 1, slots = 1;
  for (let k = 1; k < count; k++) {
    const next = start + k * stride;
    const nextLength = frameLength(k);
    if (nextLength === 0) continue; // a slot whose frame was joined in a later one (pieces)
    const nextSegment = nextLength - headerLength;
    if (nextSegment <= 0 || nextSegment > segment || payload + nextSegment > ipMax) break;
    identification = (identification + 1) & 0xffff;
    if (!followsHeaders(view, start, next, nextLength, ipv4, identification)) break;
    const nl4 = next + (l4 - start);
    if (
      view.getUint32(nl4) !== view.getUint32(l4) || // ports
      view.getUint16(nl4 + 4) !== nextLength - (l4 - start) ||
      view.getUint16(nl4 + UDP_CHECKSUM_AT) === 0 ||
      !validChecksum(batch, view, next + 14, nl4, next + nextLength, PROTOCOL_UDP)
    ) break;
    // Summed only now: most datagrams that merge with none are not worth summing for nothing.
    if (
      frames === 1 && !validChecksum(batch, view, start + 14, l4, start + firstLength, PROTOCOL_UDP)
    ) {
      return 1;
    }
    payload += nextSegment;
    frames++;
    slots = k + 1;
    if (nextSegment < segment) break;
  }
  found.headerLength = headerLength;
  found.l4 = l4 - start;
  found.payload = payload;
  found.segment = segment;
  found.push = 0;
  found.ipv4 = ipv4;
  found.udp = true;
  return slots;
}

/**
 * Rewrites the headers of the frame at `start` (those of the first frame a
 * scan accepted) to stand for the whole run, and writes the virtio-net header
 * before them.
 */
function writeMerged(view: DataView, start: number): void {
  const { headerLength, payload, ipv4, udp } = found;
  const l3 = start + 14, l4 = start + found.l4;
  if (ipv4) {
    view.setUint16(l3 + 2, headerLength - 14 + payload);
    view.setUint16(l3 + 10, 0);
    view.setUint16(l3 + 10, finishChecksum(addWords(view, l3, l4, 0)));
  } else view.setUint16(l3 + 4, headerLength - 14 - 40 + payload);
  const transportLength = headerLength - found.l4 + payload;
  if (udp) view.setUint16(l4 + 4, transportLength);
  else view.setUint8(l4 + 13, TCP_ACK | found.push);
  // The kernel completes a NEEDS_CSUM checksum from the pseudo-header's sum in the field.
  const protocol = udp ? PROTOCOL_UDP : PROTOCOL_TCP;
  const checksumAt = udp ? UDP_CHECKSUM_AT : TCP_CHECKSUM_AT;
  const pseudo = addressSum(view, l3, ipv4);
  view.setUint16(l4 + checksumAt, ~finishChecksum(pseudo + protocol + transportLength) & 0xffff);
  merged.flags = NEEDS_CSUM;
  merged.gsoType = udp ? GSO_UDP_L4 : ipv4 ? GSO_TCPV4 : GSO_TCPV6;
  merged.headerLength = headerLength;
  merged.gsoSize = found.segment;
  merged.csumStart = found.l4;
  merged.csumOffset = checksumAt;
  merged.encode(view, start - VNET_HEADER);
}

/**
 * Receive offload (GRO) for a TAP: finds how many frames of `batch`, from
 * `first` on, make one run that Linux's own GRO would merge, segments of one
 * TCP stream or datagrams of one UDP flow (see `scanRun`; a held frame ends
 * them). When more than one, it rewrites the first frame's headers to stand
 * for all of them and writes the virtio-net header before it, so that one
 * write hands the kernel one super-frame, which its TCP stack takes whole and
 * its UDP cuts apart again at the socket. Returns how many slots the first
 * now stands for, empty ones among them (1: send it as it is).
 */
export function coalesceFrames(batch: FrameBatch, view: DataView, first: number): number {
  let end = batch.count;
  if (batch.heldFrames > 0) {
    for (let j = first + 1; j < end; j++) {
      if (batch.held[j * HELD_WORDS + 2] !== 0) end = j;
    }
  }
  const start = batch.offset(first);
  const count = scanRun(batch, view, start, SLOT_SIZE, end - first, batch.lengths, first, 0, 0);
  if (count > 1) writeMerged(view, start);
  return count;
}

/**
 * Receive offload for the frames of a UDP_GRO run where they arrived: `count`
 * frames in `batch`'s bytes, the first at `start`, each next one `stride`
 * bytes further, each `length` bytes but the last (`lastLength`). When more
 * than one from the first merge (the rules of {@linkcode coalesceFrames}), it
 * copies the first one's headers to `to`, rewrites them to stand for the
 * merged ones, with the virtio-net header before them, and describes the
 * payloads in slot `slot`'s {@linkcode FrameBatch.held} entry and its
 * length. Returns how many frames merged (1: none, and nothing written).
 */
export function coalesceRun(
  batch: FrameBatch,
  view: DataView,
  start: number,
  stride: number,
  count: number,
  length: number,
  lastLength: number,
  slot: number,
): number {
  const merged = scanRun(batch, view, start, stride, count, null, 0, length, lastLength);
  if (merged < 2) return merged;
  const to = batch.offset(slot);
  const headerLength = found.headerLength;
  batch.bytes.copyWithin(to, start, start + headerLength);
  writeMerged(view, to);
  const held = slot * HELD_WORDS;
  batch.held[held] = start + headerLength;
  batch.held[held + 1] = stride;
  batch.held[held + 2] = merged;
  batch.held[held + 3] = found.segment;
  batch.heldFrames++;
  batch.lengths[slot] = headerLength + found.payload;
  return merged;
}
