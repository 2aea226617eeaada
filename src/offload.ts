/**
 * What a NIC does for a TAP with offloads: completing the checksums the
 * kernel left open, and cutting TCP super-frames (TSO) into frames of one
 * segment each, so that what leaves vdeno is ordinary Ethernet.
 *
 * Frames are read through DataViews: any alignment, network byte order, and
 * no allocation per frame.
 *
 * @module
 */

/** Bytes of the virtio-net header before each frame (struct virtio_net_hdr). */
export const VNET_HEADER = 10;
/** Header flag: the checksum from csum_start to the end is still to be computed. */
export const NEEDS_CSUM = 1;
/** Header gso_type of an ordinary frame. */
export const GSO_NONE = 0;
const GSO_TCPV4 = 1;
const GSO_TCPV6 = 4;
const GSO_ECN = 0x80;

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const ETHERTYPE_QINQ = 0x88a8;
const PROTOCOL_TCP = 6;
const UDP_CHECKSUM_AT = 6;
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

/** Folds an unfolded sum to 16 bits and complements it: the value of a checksum field. */
export function finishChecksum(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
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
  let value = finishChecksum(addWords(view, frameStart + csumStart, frameStart + frameLength, 0));
  if (value === 0 && csumOffset === UDP_CHECKSUM_AT) value = 0xffff; // 0 means "none" in UDP
  view.setUint16(frameStart + field, value);
  return true;
}

/**
 * Cuts one TCP super-frame into segments, as TSO hardware does: the same
 * headers on each, the IPv4 length, identification and header checksum, the
 * IPv6 payload length, the sequence number, FIN and PSH on the last segment
 * only, CWR on the first only, and each segment's TCP checksum.
 */
export class TcpSegmenter {
  /** The super-frame is assembled here, from offset 0. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  readonly #view: DataView;
  readonly #maxFrame: number;
  #segmentLimit = Infinity;
  #length = 0;
  #headerLength = 0;
  #l3 = 0;
  #l4 = 0;
  #ipv4 = false;
  #mss = 0;
  #next = 0;
  #index = 0;
  #sequence = 0;
  #identification = 0;

  constructor(capacity: number, maxFrame: number) {
    this.bytes = new Uint8Array(capacity);
    this.#view = new DataView(this.bytes.buffer);
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

  /** True while segments of the loaded super-frame are left. */
  get pending(): boolean {
    return this.#next < this.#length;
  }

  /**
   * Takes the super-frame in `bytes[0, length)`, with its header's gso_type,
   * gso_size and csum_start. Returns false, and takes nothing, when it is not
   * a TCP super-frame that can be cut into frames of at most `maxFrame` bytes.
   */
  load(length: number, gsoType: number, gsoSize: number, csumStart: number): boolean {
    this.#length = 0;
    const view = this.#view;
    const type = gsoType & ~GSO_ECN;
    if (length > this.bytes.length || length < 14 + 40) return false;
    let l3 = 14;
    let ethertype = view.getUint16(12);
    if (ethertype === ETHERTYPE_VLAN || ethertype === ETHERTYPE_QINQ) {
      l3 = 18;
      ethertype = view.getUint16(16);
    }
    const ipv4 = ethertype === ETHERTYPE_IPV4 && type === GSO_TCPV4;
    if (ipv4) {
      const version = view.getUint8(l3) >> 4;
      const headerLength = (view.getUint8(l3) & 15) * 4;
      if (version !== 4 || headerLength < 20 || l3 + headerLength !== csumStart) return false;
      if (view.getUint8(l3 + 9) !== PROTOCOL_TCP) return false;
    } else if (ethertype !== ETHERTYPE_IPV6 || type !== GSO_TCPV6 || csumStart < l3 + 40) {
      return false;
    }
    const l4 = csumStart;
    if (l4 + 20 > length) return false;
    const headerLength = l4 + (view.getUint8(l4 + 12) >> 4) * 4;
    if (headerLength < l4 + 20 || headerLength >= length) return false;
    if (gsoSize === 0 || headerLength + gsoSize > this.#maxFrame) return false;
    this.#l3 = l3;
    this.#l4 = l4;
    this.#ipv4 = ipv4;
    this.#headerLength = headerLength;
    // Never below 512 bytes of payload: on a path that narrow, fragments are cheaper.
    this.#mss = Math.max(
      Math.min(gsoSize, this.#segmentLimit - headerLength),
      Math.min(gsoSize, 512),
    );
    this.#next = headerLength;
    this.#index = 0;
    this.#sequence = view.getUint32(l4 + 4);
    this.#identification = ipv4 ? view.getUint16(l3 + 4) : 0;
    this.#length = length;
    return true;
  }

  /** Writes the next segment as a frame at `offset` of `out`; returns its length. */
  next(out: DataView, offset: number): number {
    const source = this.#view;
    const headerLength = this.#headerLength;
    const l3 = offset + this.#l3;
    const l4 = offset + this.#l4;
    const payload = Math.min(this.#mss, this.#length - this.#next);
    const end = this.#next + payload;
    const index = this.#index;

    let i = 0;
    for (; i + 4 <= headerLength; i += 4) out.setUint32(offset + i, source.getUint32(i));
    for (; i < headerLength; i++) out.setUint8(offset + i, source.getUint8(i));

    let pseudo: number;
    if (this.#ipv4) {
      out.setUint16(l3 + 2, headerLength - this.#l3 + payload);
      out.setUint16(l3 + 4, (this.#identification + index) & 0xffff);
      out.setUint16(l3 + 10, 0);
      out.setUint16(l3 + 10, finishChecksum(addWords(out, l3, l4, 0)));
      pseudo = addWords(out, l3 + 12, l3 + 20, 0);
    } else {
      out.setUint16(l3 + 4, headerLength - this.#l3 - 40 + payload);
      pseudo = addWords(out, l3 + 8, l3 + 40, 0);
    }
    out.setUint32(l4 + 4, (this.#sequence + index * this.#mss) % 0x100000000);
    let flags = source.getUint8(this.#l4 + 13);
    if (end < this.#length) flags &= ~(TCP_FIN | TCP_PSH);
    if (index > 0) flags &= ~TCP_CWR;
    out.setUint8(l4 + 13, flags);
    out.setUint16(l4 + 16, 0);

    const tcpLength = headerLength - this.#l4 + payload;
    let sum = pseudo + PROTOCOL_TCP + tcpLength + addWords(out, l4, offset + headerLength, 0);
    // Copy and sum the payload in one pass, as the kernel's csum_and_copy does.
    let from = this.#next;
    let to = offset + headerLength;
    for (; from + 4 <= end; from += 4, to += 4) {
      const word = source.getUint32(from);
      out.setUint32(to, word);
      sum += word;
    }
    if (from + 2 <= end) {
      const word = source.getUint16(from);
      out.setUint16(to, word);
      sum += word;
      from += 2;
      to += 2;
    }
    if (from < end) {
      const last = source.getUint8(from);
      out.setUint8(to, last);
      sum += last << 8;
    }
    out.setUint16(l4 + 16, finishChecksum(sum));

    this.#next = end;
    this.#index = index + 1;
    return headerLength + payload;
  }
}
