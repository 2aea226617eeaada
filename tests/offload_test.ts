/**
 * What plugs/_offload.ts does in place of a NIC, checked frame by frame against
 * a checksum written here byte by byte from RFC 1071 (not the module's): TCP
 * super-frames cut into segments that each stand alone as TSO hardware would
 * send them, and checksums the kernel left open completed.
 */

import assert from "node:assert/strict";
import { completeChecksum, Segmenter, VNET_HEADER, VnetHeader } from "../plugs/_offload.ts";
import { FrameBatch, HEADROOM, MAX_FRAME, SLOT_SIZE, SUPER_FRAME_SIZE } from "../core/frames.ts";
import { type ChecksumArea, checksumArea } from "../core/checksum.ts";
import { libc } from "../ffi/libc.ts";
import {
  AF_INET,
  bindSocket,
  DatagramVector,
  localAddress,
  numericAddress,
  SOCKADDR_SIZE,
  SocketAddress,
  udpSocket,
} from "../ffi/net.ts";
import { MessagePlanner } from "../plugs/_runs.ts";

const GSO_TCPV4 = 1;
const GSO_UDP = 3;
const GSO_TCPV6 = 4;
const GSO_ECN = 0x80;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_ACK = 0x10;
const TCP_CWR = 0x80;
const SEGMENT_SIZE = 1448; // what Linux uses on a 1500-byte link with TCP timestamps
const TCP_HEADER = 32; // 20 bytes and a 12-byte timestamp option
const FIRST_SEQUENCE = 0xffff_e000; // the sequence number wraps within the super-frame
const FIRST_ID = 0xfffe; // so does the IPv4 identification

/** RFC 1071, one byte at a time: the 16-bit one's complement sum of `parts`, concatenated. */
function onesComplementSum(...parts: Uint8Array[]): number {
  const bytes = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    const high = bytes[i];
    const low = i + 1 < bytes.length ? bytes[i + 1] : 0;
    sum += high * 256 + low;
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  }
  return sum;
}

/** The pseudo-header that a TCP or UDP checksum covers, for the IP header at `ip`. */
function pseudoHeader(ip: Uint8Array, protocol: number, upperLength: number): Uint8Array {
  const ipv4 = ip[0] >> 4 === 4;
  const addresses = ipv4 ? ip.subarray(12, 20) : ip.subarray(8, 40);
  const pseudo = new Uint8Array(addresses.length + (ipv4 ? 4 : 8));
  pseudo.set(addresses);
  const tail = new DataView(pseudo.buffer, addresses.length);
  if (ipv4) {
    tail.setUint8(1, protocol);
    tail.setUint16(2, upperLength);
  } else {
    tail.setUint32(0, upperLength);
    tail.setUint8(7, protocol);
  }
  return pseudo;
}

/** Seeded pseudo-random bytes (xorshift32), the same on every run. */
function randomBytes(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let state = seed;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[i] = state & 0xff;
  }
  return bytes;
}

interface FrameShape {
  ipv4: boolean;
  vlan?: boolean;
  /** IP protocol number (default TCP). */
  protocol?: number;
}

interface BuiltFrame {
  length: number;
  /** Where the IP header starts. */
  l3: number;
  /** Where the TCP or UDP header starts: the virtio-net header's csum_start. */
  l4: number;
}

/**
 * Writes Ethernet (optionally 802.1Q-tagged), IPv4 or IPv6, and a TCP header
 * with a timestamp option followed by `payload` into `into`, as a TAP with
 * TSO hands it over: IP lengths for the whole super-frame, the TCP checksum
 * field holding the pseudo-header's sum (NEEDS_CSUM).
 */
function buildTcpFrame(into: Uint8Array, shape: FrameShape, payload: Uint8Array): BuiltFrame {
  const view = new DataView(into.buffer, into.byteOffset);
  into.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], 0); // destination, source MAC
  let l3 = 14;
  if (shape.vlan) {
    view.setUint16(12, 0x8100);
    view.setUint16(14, 42); // VLAN 42
    l3 = 18;
  }
  view.setUint16(l3 - 2, shape.ipv4 ? 0x0800 : 0x86dd);
  const protocol = shape.protocol ?? 6;
  const l4 = l3 + (shape.ipv4 ? 20 : 40);
  const tcpLength = TCP_HEADER + payload.length;
  if (shape.ipv4) {
    view.setUint8(l3, 0x45);
    view.setUint16(l3 + 2, 20 + tcpLength);
    view.setUint16(l3 + 4, FIRST_ID);
    view.setUint16(l3 + 6, 0x4000); // DF
    view.setUint8(l3 + 8, 64);
    view.setUint8(l3 + 9, protocol);
    view.setUint16(l3 + 10, 0x1234); // the kernel's, for the super-frame: no use to a segment
    into.set([10, 0, 0, 1, 10, 0, 0, 2], l3 + 12);
  } else {
    view.setUint32(l3, 0x6000_0000);
    view.setUint16(l3 + 4, tcpLength);
    view.setUint8(l3 + 6, protocol);
    view.setUint8(l3 + 7, 64);
    into.set([0xfd, 0x77, ...new Array(13).fill(0), 1], l3 + 8);
    into.set([0xfd, 0x77, ...new Array(13).fill(0), 2], l3 + 24);
  }
  view.setUint16(l4, 40000); // source port
  view.setUint16(l4 + 2, 5001); // destination port
  view.setUint32(l4 + 4, FIRST_SEQUENCE);
  view.setUint32(l4 + 8, 0x0102_0304); // acknowledgement
  view.setUint8(l4 + 12, (TCP_HEADER / 4) << 4);
  view.setUint8(l4 + 13, TCP_PSH | TCP_FIN | TCP_CWR | TCP_ACK);
  view.setUint16(l4 + 14, 502); // window
  view.setUint16(l4 + 18, 0); // urgent pointer
  into.set([1, 1, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0xd4, 0x31], l4 + 20); // NOP NOP TS
  into.set(payload, l4 + TCP_HEADER);
  const ip = into.subarray(l3, l4);
  view.setUint16(l4 + 16, onesComplementSum(pseudoHeader(ip, protocol, tcpLength)));
  return { length: l4 + tcpLength, l3, l4 };
}

/** Cuts the loaded super-frame into `out`, one after the other; returns where each frame is. */
function cutAll(segmenter: Segmenter, out: ChecksumArea): { start: number; length: number }[] {
  const view = new DataView(out.bytes.buffer);
  const frames: { start: number; length: number }[] = [];
  let start = 0;
  while (segmenter.pending) {
    const length = segmenter.next(out, view, start);
    frames.push({ start, length });
    start += length + 3; // odd gaps: frames at any alignment
    assert.ok(frames.length <= 100, "the segmenter does not stop");
  }
  return frames;
}

/**
 * Checks the Ethernet and IP headers of segment k, `frame`, cut from
 * `original`: the same Ethernet header, the IP lengths of the segment, and on
 * IPv4 the next identification and a valid header checksum. Returns its IP
 * header.
 */
function assertFrameHeaders(
  frame: Uint8Array,
  original: Uint8Array,
  built: BuiltFrame,
  k: number,
  what: string,
): Uint8Array {
  const { l3, l4 } = built;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  assert.deepEqual(frame.subarray(0, l3), original.subarray(0, l3), `${what}: Ethernet header`);
  const ip = frame.subarray(l3, l4);
  if (original[l3] >> 4 === 4) {
    assert.equal(view.getUint16(l3 + 2), frame.length - l3, `${what}: IPv4 total length`);
    assert.equal(view.getUint16(l3 + 4), (FIRST_ID + k) & 0xffff, `${what}: IPv4 id`);
    assert.equal(onesComplementSum(ip), 0xffff, `${what}: IPv4 header checksum`);
  } else assert.equal(view.getUint16(l3 + 4), frame.length - l4, `${what}: IPv6 payload length`);
  return ip;
}

/**
 * Checks every segment on its own, as the receiving host would: IP lengths
 * and checksum, sequence numbers, flags, TCP checksum; and that the payloads
 * concatenate back to `payload`. Returns the frame lengths.
 */
function assertSegments(
  original: Uint8Array,
  built: BuiltFrame,
  out: Uint8Array,
  frames: { start: number; length: number }[],
  payload: Uint8Array,
  payloadPerSegment: number,
): number[] {
  const { l3, l4 } = built;
  const ipv4 = original[l3] >> 4 === 4;
  const headerLength = l4 + TCP_HEADER;
  assert.equal(frames.length, Math.ceil(payload.length / payloadPerSegment));
  const received: Uint8Array[] = [];
  frames.forEach(({ start, length }, k) => {
    const frame = out.subarray(start, start + length);
    const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    const what = `segment ${k + 1} of ${frames.length}`;
    const last = k === frames.length - 1;
    const carried = length - headerLength;
    assert.equal(carried, last ? payload.length - k * payloadPerSegment : payloadPerSegment, what);
    const ip = assertFrameHeaders(frame, original, built, k, what);
    if (ipv4) {
      for (const field of [0, 1, 6, 7, 8, 9, ...Array.from({ length: 8 }, (_, i) => 12 + i)]) {
        assert.equal(frame[l3 + field], original[l3 + field], `${what}: IPv4 byte ${field}`);
      }
    } else {
      assert.deepEqual(ip.subarray(0, 4), original.subarray(l3, l3 + 4), `${what}: IPv6 word 0`);
      assert.deepEqual(ip.subarray(6), original.subarray(l3 + 6, l4), `${what}: IPv6 header`);
    }

    assert.equal(
      view.getUint32(l4 + 4),
      (FIRST_SEQUENCE + k * payloadPerSegment) % 2 ** 32,
      `${what}: sequence number`,
    );
    assert.deepEqual(frame.subarray(l4, l4 + 4), original.subarray(l4, l4 + 4), `${what}: ports`);
    assert.deepEqual(
      frame.subarray(l4 + 8, l4 + 13),
      original.subarray(l4 + 8, l4 + 13),
      `${what}: acknowledgement and data offset`,
    );
    const flags = frame[l4 + 13];
    assert.equal(flags & TCP_ACK, TCP_ACK, `${what}: ACK`);
    assert.equal(flags & TCP_FIN, last ? TCP_FIN : 0, `${what}: FIN on the last segment only`);
    assert.equal(flags & TCP_PSH, last ? TCP_PSH : 0, `${what}: PSH on the last segment only`);
    assert.equal(flags & TCP_CWR, k === 0 ? TCP_CWR : 0, `${what}: CWR on the first only`);
    assert.deepEqual(
      frame.subarray(l4 + 14, l4 + 16),
      original.subarray(l4 + 14, l4 + 16),
      `${what}: window`,
    );
    assert.deepEqual(
      frame.subarray(l4 + 18, headerLength),
      original.subarray(l4 + 18, headerLength),
      `${what}: urgent pointer and options`,
    );
    const tcp = frame.subarray(l4);
    assert.equal(
      onesComplementSum(pseudoHeader(ip, 6, tcp.length), tcp),
      0xffff,
      `${what}: TCP checksum`,
    );
    received.push(frame.slice(headerLength));
  });
  const joined = new Uint8Array(received.reduce((n, part) => n + part.length, 0));
  received.reduce((at, part) => (joined.set(part, at), at + part.length), 0);
  assert.deepEqual(joined, payload, "the payloads concatenate back to the original");
  return frames.map((frame) => frame.length);
}

/** A segmenter as TapPlug makes one: segments no larger than MAX_FRAME. */
function newSegmenter(): Segmenter {
  return new Segmenter(MAX_FRAME);
}

/** Room for a super-frame, as a FrameBatch keeps after its slots. */
function superFrameArea(): ChecksumArea {
  return checksumArea(SUPER_FRAME_SIZE);
}

function segmentAndCheck(
  shape: FrameShape,
  payloadLength: number,
  options: { fitTo?: number; gsoType?: number } = {},
): number[] {
  const segmenter = newSegmenter();
  if (options.fitTo) segmenter.fitTo(options.fitTo);
  const source = superFrameArea();
  const payload = randomBytes(payloadLength, 0x5eed + payloadLength);
  const built = buildTcpFrame(source.bytes, shape, payload);
  const original = source.bytes.slice(0, built.length);
  const gsoType = options.gsoType ?? (shape.ipv4 ? GSO_TCPV4 : GSO_TCPV6) | GSO_ECN;
  assert.ok(
    segmenter.load(source, 0, built.length, gsoType, SEGMENT_SIZE, built.l4),
    "load refused it",
  );
  const out = checksumArea(payloadLength * 2 + 100_000);
  const frames = cutAll(segmenter, out);
  const headerLength = built.l4 + TCP_HEADER;
  const perSegment = Math.min(SEGMENT_SIZE, (options.fitTo ?? Infinity) - headerLength);
  return assertSegments(original, built, out.bytes, frames, payload, perSegment);
}

Deno.test("an IPv4 TCP super-frame is cut into segments that each stand alone", () => {
  const lengths = segmentAndCheck({ ipv4: true }, 10_000);
  assert.deepEqual(lengths, [...new Array(6).fill(66 + 1448), 66 + 10_000 - 6 * 1448]);
});

Deno.test("an IPv6 TCP super-frame is cut into segments that each stand alone", () => {
  const lengths = segmentAndCheck({ ipv4: false }, 10_000);
  assert.deepEqual(lengths, [...new Array(6).fill(86 + 1448), 86 + 10_000 - 6 * 1448]);
});

Deno.test("an 802.1Q-tagged IPv4 TCP super-frame keeps its tag on every segment", () => {
  const lengths = segmentAndCheck({ ipv4: true, vlan: true }, 10_000);
  assert.equal(lengths.length, 7);
  assert.equal(lengths[0], 70 + 1448);
});

Deno.test("a last segment of odd length gets a valid checksum (padded, not read past the end)", () => {
  for (const ipv4 of [true, false]) {
    const lengths = segmentAndCheck({ ipv4 }, 10_001);
    assert.equal((lengths.at(-1)! - (ipv4 ? 66 : 86)) % 2, 1);
  }
});

Deno.test("a super-frame without ECN in its gso_type is cut the same way", () => {
  assert.equal(segmentAndCheck({ ipv4: true }, 5000, { gsoType: GSO_TCPV4 }).length, 4);
});

Deno.test("fitTo(1464) cuts frames of at most 1464 bytes, the vxvde payload of a 1500-byte MTU", () => {
  for (const shape of [{ ipv4: true }, { ipv4: false }, { ipv4: true, vlan: true }]) {
    const lengths = segmentAndCheck(shape, 10_000, { fitTo: 1464 });
    assert.ok(lengths.every((length) => length <= 1464), `frames of ${lengths.join(", ")} bytes`);
    assert.ok(lengths.slice(0, -1).every((length) => length === 1464), "frames are filled");
  }
});

Deno.test("load refuses what it cannot cut, and takes nothing then", async (t) => {
  const payload = randomBytes(3000, 7);
  const cases: [string, FrameShape, (built: BuiltFrame) => [number, number, number, number]][] = [
    ["UDP in IPv4 with a TCPv4 gso_type", { ipv4: true, protocol: 17 }, (b) => [
      b.length,
      GSO_TCPV4,
      SEGMENT_SIZE,
      b.l4,
    ]],
    ["IPv4 with the TCPv6 gso_type", { ipv4: true }, (b) => [b.length, GSO_TCPV6, 1448, b.l4]],
    ["IPv6 with the TCPv4 gso_type", { ipv4: false }, (b) => [b.length, GSO_TCPV4, 1448, b.l4]],
    ["IPv4 with the UFO gso_type", { ipv4: true }, (b) => [b.length, GSO_UDP, 1448, b.l4]],
    ["gso_size 0", { ipv4: true }, (b) => [b.length, GSO_TCPV4, 0, b.l4]],
    ["gso_size beyond the largest frame", { ipv4: true }, (b) => [
      b.length,
      GSO_TCPV4,
      MAX_FRAME,
      b.l4,
    ]],
    ["csum_start not after the IPv4 header", { ipv4: true }, (b) => [
      b.length,
      GSO_TCPV4,
      1448,
      b.l4 + 4,
    ]],
    ["IPv4 cut inside the IP header", { ipv4: true }, (b) => [14 + 16, GSO_TCPV4, 1448, b.l4]],
    ["IPv4 cut inside the TCP header", { ipv4: true }, (b) => [b.l4 + 19, GSO_TCPV4, 1448, b.l4]],
    ["IPv4 cut inside the TCP options", { ipv4: true }, (b) => [b.l4 + 30, GSO_TCPV4, 1448, b.l4]],
    ["IPv6 cut inside the TCP header", { ipv4: false }, (b) => [b.l4 + 10, GSO_TCPV6, 1448, b.l4]],
    ["headers and no payload", { ipv4: true }, (b) => [b.l4 + TCP_HEADER, GSO_TCPV4, 1448, b.l4]],
    ["a length beyond its buffer", { ipv4: true }, () => [10_000_000, GSO_TCPV4, 1448, 34]],
  ];
  for (const [name, shape, loadArguments] of cases) {
    await t.step(name, () => {
      const segmenter = newSegmenter();
      const source = superFrameArea();
      // A super-frame still pending is dropped by a refused load.
      const good = buildTcpFrame(source.bytes, { ipv4: true }, payload);
      assert.ok(segmenter.load(source, 0, good.length, GSO_TCPV4, 1448, good.l4));
      assert.ok(segmenter.pending);
      const built = buildTcpFrame(source.bytes, shape, payload);
      assert.equal(segmenter.load(source, 0, ...loadArguments(built)), false);
      assert.equal(segmenter.pending, false);
    });
  }
});

/** A frame with a UDP/IPv4 or TCP/IPv6 checksum left open, at `frameStart` of a buffer. */
function openChecksumFrame(
  ipv4: boolean,
  payload: Uint8Array,
  frameStart: number,
): { buffer: Uint8Array; length: number; l4: number; checksumAt: number } {
  const buffer = new Uint8Array(frameStart + 2000).fill(0xee);
  const frame = buffer.subarray(frameStart);
  const view = new DataView(buffer.buffer, frameStart);
  frame.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], 0);
  if (ipv4) {
    view.setUint16(12, 0x0800);
    const l4 = 34, udpLength = 8 + payload.length;
    frame.set([0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], 14);
    view.setUint16(16, 20 + udpLength);
    view.setUint16(24, (~onesComplementSum(frame.subarray(14, 34))) & 0xffff);
    view.setUint16(l4, 53000);
    view.setUint16(l4 + 2, 53);
    view.setUint16(l4 + 4, udpLength);
    frame.set(payload, l4 + 8);
    const pseudo = pseudoHeader(frame.subarray(14, 34), 17, udpLength);
    view.setUint16(l4 + 6, onesComplementSum(pseudo));
    return { buffer, length: l4 + udpLength, l4, checksumAt: 6 };
  }
  view.setUint16(12, 0x86dd);
  const l4 = 54, tcpLength = 20 + payload.length;
  view.setUint32(14, 0x6000_0000);
  view.setUint16(18, tcpLength);
  view.setUint8(20, 6);
  view.setUint8(21, 64);
  frame.set([0xfd, 0x77, ...new Array(13).fill(0), 1], 22);
  frame.set([0xfd, 0x77, ...new Array(13).fill(0), 2], 38);
  view.setUint16(l4, 40000);
  view.setUint16(l4 + 2, 5001);
  view.setUint32(l4 + 4, 12345);
  view.setUint32(l4 + 8, 67890);
  view.setUint16(l4 + 12, 0x5018); // 20 bytes, PSH ACK
  view.setUint16(l4 + 14, 502);
  frame.set(payload, l4 + 20);
  const pseudo = pseudoHeader(frame.subarray(14, 54), 6, tcpLength);
  view.setUint16(l4 + 16, onesComplementSum(pseudo));
  return { buffer, length: l4 + tcpLength, l4, checksumAt: 16 };
}

/** Whether the transport checksum of the frame at `frameStart` verifies, by RFC 1071. */
function transportChecksumValid(buffer: Uint8Array, frameStart: number, length: number): boolean {
  const frame = buffer.subarray(frameStart, frameStart + length);
  const ipv4 = frame[12] === 0x08;
  const ip = frame.subarray(14, ipv4 ? 34 : 54);
  const transport = frame.subarray(ipv4 ? 34 : 54);
  const pseudo = pseudoHeader(ip, ipv4 ? 17 : 6, transport.length);
  return onesComplementSum(pseudo, transport) === 0xffff;
}

Deno.test("completeChecksum finishes the checksum of a UDP/IPv4 frame the kernel left open", () => {
  const frameStart = 64;
  for (const payloadLength of [333, 1000]) {
    const { buffer, length, l4, checksumAt } = openChecksumFrame(
      true,
      randomBytes(payloadLength, 11),
      frameStart,
    );
    const before = buffer.slice();
    assert.equal(transportChecksumValid(buffer, frameStart, length), false);
    assert.ok(completeChecksum(new DataView(buffer.buffer), frameStart, length, l4, checksumAt));
    assert.ok(transportChecksumValid(buffer, frameStart, length), `${payloadLength} bytes`);
    const checksumField = frameStart + l4 + checksumAt;
    buffer.set(before.subarray(checksumField, checksumField + 2), checksumField);
    assert.deepEqual(buffer, before, "nothing but the checksum field changed");
  }
});

Deno.test("completeChecksum finishes the checksum of a TCP/IPv6 frame the kernel left open", () => {
  const frameStart = 61; // odd: the frame may sit anywhere
  for (const payloadLength of [0, 1, 777, 1440]) {
    const { buffer, length, l4, checksumAt } = openChecksumFrame(
      false,
      randomBytes(payloadLength, 13),
      frameStart,
    );
    assert.ok(completeChecksum(new DataView(buffer.buffer), frameStart, length, l4, checksumAt));
    assert.ok(transportChecksumValid(buffer, frameStart, length), `${payloadLength} bytes`);
  }
});

Deno.test("completeChecksum writes a UDP checksum that comes out 0 as 0xffff (0 means none)", () => {
  const payload = randomBytes(100, 17);
  const frameStart = 64;
  // Choose the last two payload bytes so that the complete sum is 0xffff and its complement 0.
  payload[98] = payload[99] = 0;
  let built = openChecksumFrame(true, payload, frameStart);
  const { l4 } = built;
  const rest = onesComplementSum(built.buffer.subarray(frameStart + l4, frameStart + built.length));
  const filler = 0xffff - rest;
  payload[98] = filler >> 8;
  payload[99] = filler & 0xff;
  built = openChecksumFrame(true, payload, frameStart);
  const view = new DataView(built.buffer.buffer);
  assert.ok(completeChecksum(view, frameStart, built.length, l4, built.checksumAt));
  assert.equal(view.getUint16(frameStart + l4 + 6), 0xffff);
  assert.ok(transportChecksumValid(built.buffer, frameStart, built.length));
});

Deno.test("completeChecksum refuses offsets past the frame and leaves it as it was", () => {
  const frameStart = 64;
  const { buffer, length, l4 } = openChecksumFrame(true, randomBytes(50, 19), frameStart);
  const before = buffer.slice();
  const view = new DataView(buffer.buffer);
  assert.equal(completeChecksum(view, frameStart, length, l4, length - l4 - 1), false);
  assert.equal(completeChecksum(view, frameStart, length, length, 6), false);
  assert.equal(completeChecksum(view, frameStart, length, length + 1000, 16), false);
  assert.equal(completeChecksum(view, frameStart, 30, l4, 6), false);
  assert.deepEqual(buffer, before);
  assert.ok(completeChecksum(view, frameStart, length, l4, length - l4 - 2), "the last two bytes");
});

Deno.test("VnetHeader writes struct virtio_net_hdr's layout and reads it back", () => {
  const view = new DataView(new ArrayBuffer(12));
  const header = new VnetHeader();
  Object.assign(header, {
    flags: 1,
    gsoType: 4,
    headerLength: 86,
    gsoSize: 1448,
    csumStart: 54,
    csumOffset: 16,
  });
  header.encode(view, 2);
  // flags, gso_type, then hdr_len, gso_size, csum_start, csum_offset little-endian.
  assert.deepEqual(
    [...new Uint8Array(view.buffer, 2, VNET_HEADER)],
    [1, 4, 86, 0, 0xa8, 0x05, 54, 0, 16, 0],
  );
  assert.deepEqual({ ...new VnetHeader().decode(view, 2) }, { ...header });
  VnetHeader.clear(view, 2);
  assert.deepEqual({ ...new VnetHeader().decode(view, 2) }, { ...new VnetHeader() });
});

/** A super-frame cut twice: plainly into an area of its own, and split in place in a batch. */
interface CutBothWays {
  /** The plain segments, each a frame of its own. */
  plain: Uint8Array[];
  /** The batch: split segments in slots [0, count), the super-frame in its room. */
  batch: FrameBatch;
  /** The super-frame's bytes before the cut. */
  original: Uint8Array;
}

/**
 * Builds a super-frame in a batch's room for one, cuts a copy of it with
 * next() and the batch's own with nextHead() into the batch's slots, marking
 * them split as a TAP does.
 */
function cutBothWays(shape: FrameShape, payloadLength: number, fitTo?: number): CutBothWays {
  const batch = new FrameBatch();
  const at = batch.superFrameAt;
  const payload = randomBytes(payloadLength, 0x5eed + payloadLength);
  const built = buildTcpFrame(batch.bytes.subarray(at), shape, payload);
  const original = batch.bytes.slice(at, at + built.length);
  const gsoType = shape.ipv4 ? GSO_TCPV4 : GSO_TCPV6;

  const plainSegmenter = newSegmenter();
  const source = superFrameArea();
  source.bytes.set(original);
  if (fitTo) plainSegmenter.fitTo(fitTo);
  assert.ok(plainSegmenter.load(source, 0, built.length, gsoType, SEGMENT_SIZE, built.l4));
  const out = checksumArea(payloadLength * 2 + 100_000);
  const plain = cutAll(plainSegmenter, out).map(({ start, length }) =>
    out.bytes.slice(start, start + length)
  );

  const segmenter = newSegmenter();
  if (fitTo) segmenter.fitTo(fitTo);
  assert.ok(segmenter.load(batch, at, built.length, gsoType, SEGMENT_SIZE, built.l4));
  const view = new DataView(batch.bytes.buffer);
  while (segmenter.pending) {
    const i = batch.count++;
    batch.lengths[i] = segmenter.nextHead(batch, view, batch.offset(i));
    batch.heads[i] = segmenter.headerLength;
    batch.rests[i] = segmenter.restAt;
    batch.splitFrames++;
  }
  return { plain, batch, original };
}

Deno.test("nextHead writes each segment's headers and leaves its payload in the super-frame", () => {
  const shapes = [{ ipv4: true }, { ipv4: false }, { ipv4: true, vlan: true }];
  for (
    const [shape, payloadLength, fitTo] of [
      ...shapes.map((shape) => [shape, 10_001, 1464] as const), // a last segment short and odd
      [{ ipv4: true }, 8 * 1448, undefined] as const, // all of one size
    ]
  ) {
    const what = `${JSON.stringify(shape)}, ${payloadLength} bytes`;
    const { plain, batch, original } = cutBothWays(shape, payloadLength, fitTo);
    assert.equal(batch.count, plain.length, what);
    const at = batch.superFrameAt;
    for (let i = 0; i < batch.count; i++) {
      const head = batch.heads[i], rest = batch.rests[i];
      const frame = new Uint8Array(batch.lengths[i]);
      frame.set(batch.bytes.subarray(batch.offset(i), batch.offset(i) + head));
      frame.set(batch.bytes.subarray(rest, rest + batch.lengths[i] - head), head);
      assert.deepEqual(frame, plain[i], `${what}: segment ${i + 1} of ${batch.count}`);
      assert.ok(
        rest >= at + head && rest < at + original.length,
        `${what}: rest in the super-frame`,
      );
    }
    assert.deepEqual(batch.bytes.subarray(at, at + original.length), original, "left as it was");
    // Joined, each frame is whole in its slot.
    batch.joinSplitFrames();
    assert.equal(batch.splitFrames, 0);
    for (let i = 0; i < batch.count; i++) {
      assert.equal(batch.heads[i], 0);
      assert.deepEqual(batch.frame(i), plain[i], `${what}: segment ${i + 1} joined`);
    }
  }
});

Deno.test("split segments sent as UDP GSO messages arrive as the datagrams plain segments make", () => {
  const receiver = udpSocket(AF_INET), sender = udpSocket(AF_INET);
  try {
    bindSocket(receiver, SocketAddress.parse("127.0.0.1", 0)!);
    bindSocket(sender, SocketAddress.parse("127.0.0.1", 0)!);
    const name = new Uint8Array(SOCKADDR_SIZE);
    name.set(localAddress(receiver).bytes);
    const PREFIX = 8; // an encapsulation header before each frame, as vxvde's
    // 1464: runs in GSO messages; 0: every datagram a message of its own.
    for (const segmentable of [1464, 0]) {
      const what = segmentable ? "GSO" : "one datagram per message";
      const { plain, batch } = cutBothWays({ ipv4: true }, 20_001, 1464);
      const vector = new DatagramVector(batch.bytes, SLOT_SIZE, HEADROOM - PREFIX, batch.capacity);
      const planner = new MessagePlanner(16);
      planner.setAddresses(0, numericAddress(name));
      planner.start(vector, segmentable);
      for (let i = 0; i < batch.count; i++) {
        batch.bytes.fill(0xa0 + i, batch.offset(i) - PREFIX, batch.offset(i));
        planner.toPeer(
          i,
          PREFIX + batch.lengths[i],
          0,
          batch.lengths[i],
          PREFIX + batch.heads[i],
          batch.rests[i],
        );
      }
      const messages = planner.finish();
      assert.equal(messages, segmentable ? 1 : batch.count, what);
      assert.equal(vector.sendAll(sender, messages), 0, what);
      assert.equal(vector.segmentationRefused, false);

      const slots = new Uint8Array(SLOT_SIZE * 64);
      const received = new DatagramVector(slots, SLOT_SIZE, 0, 64);
      assert.equal(received.receiveInto(receiver, 0, 64, SLOT_SIZE), plain.length, what);
      plain.forEach((frame, i) => {
        const datagram = slots.subarray(i * SLOT_SIZE, i * SLOT_SIZE + received.length(i));
        const expected = new Uint8Array(PREFIX + frame.length).fill(0xa0 + i, 0, PREFIX);
        expected.set(frame, PREFIX);
        assert.deepEqual(datagram, expected, `${what}: datagram ${i + 1} of ${plain.length}`);
      });
      assert.ok(plain.at(-1)!.length < plain[0].length, "the last segment is the short one");
    }
  } finally {
    libc.close(receiver);
    libc.close(sender);
  }
});

const GSO_UDP_L4 = 5;

/**
 * Writes a UDP super-datagram as a TAP with USO hands one over: Ethernet, IPv4
 * or IPv6 and a UDP header whose lengths are the whole's, the checksum field
 * holding the pseudo-header's sum (NEEDS_CSUM), then `payload`.
 */
function buildUdpFrame(into: Uint8Array, ipv4: boolean, payload: Uint8Array): BuiltFrame {
  const built = buildTcpFrame(into, { ipv4, protocol: 17 }, new Uint8Array(0));
  const { l3, l4 } = built;
  const view = new DataView(into.buffer, into.byteOffset);
  const udpLength = 8 + payload.length;
  if (ipv4) view.setUint16(l3 + 2, 20 + udpLength);
  else view.setUint16(l3 + 4, udpLength);
  view.setUint16(l4 + 4, udpLength);
  into.set(payload, l4 + 8);
  view.setUint16(l4 + 6, onesComplementSum(pseudoHeader(into.subarray(l3, l4), 17, udpLength)));
  return { length: l4 + udpLength, l3, l4 };
}

for (const ipv4 of [true, false]) {
  Deno.test(`an ${ipv4 ? "IPv4" : "IPv6"} UDP super-datagram (USO) is cut into its datagrams, each whole`, () => {
    const source = superFrameArea();
    const payload = randomBytes(10_500, 0x0d0);
    const built = buildUdpFrame(source.bytes, ipv4, payload);
    const original = source.bytes.slice(0, built.length);
    const segmenter = newSegmenter();
    segmenter.fitTo(600); // a UDP datagram keeps the size its application gave it
    assert.ok(segmenter.load(source, 0, built.length, GSO_UDP_L4, 1000, built.l4));
    const out = checksumArea(100_000);
    const frames = cutAll(segmenter, out);
    const { l4 } = built;
    assert.deepEqual(frames.map((frame) => frame.length - l4 - 8), [
      ...new Array(10).fill(1000),
      500,
    ]);
    frames.forEach(({ start, length }, k) => {
      const frame = out.bytes.subarray(start, start + length);
      const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
      const what = `datagram ${k + 1}`;
      const ip = assertFrameHeaders(frame, original, built, k, what);
      assert.deepEqual(frame.subarray(l4, l4 + 4), original.subarray(l4, l4 + 4), `${what}: ports`);
      assert.equal(view.getUint16(l4 + 4), length - l4, `${what}: UDP length`);
      const udp = frame.subarray(l4);
      assert.equal(
        onesComplementSum(pseudoHeader(ip, 17, udp.length), udp),
        0xffff,
        `${what}: checksum`,
      );
      assert.deepEqual(
        frame.subarray(l4 + 8),
        payload.subarray(k * 1000, k * 1000 + length - l4 - 8),
      );
    });
  });
}

Deno.test("load refuses a TCP super-frame with the USO gso_type", () => {
  const source = superFrameArea();
  const built = buildTcpFrame(source.bytes, { ipv4: true }, randomBytes(3000, 9));
  assert.equal(newSegmenter().load(source, 0, built.length, GSO_UDP_L4, 1000, built.l4), false);
});
