/**
 * Synthetic frames for warming a plug's data path before its first real
 * frame (see `Plug.warmUp`): the kinds of frame traffic starts with (an ARP
 * broadcast, pings), a TCP super-frame, a run of UDP datagrams and a UDP GSO
 * message, between two made-up MACs and documentation addresses
 * (192.0.2.0/24). They only ever cross descriptors the warming plug opened
 * for the purpose and drains itself.
 *
 * @module
 */

import {
  AF_INET,
  bindSocket,
  DatagramVector,
  localAddress,
  SocketAddress,
  udpSocket,
} from "../ffi/net.ts";
import { closeQuietly } from "../ffi/libc.ts";
import { completeChecksum, finishChecksum } from "./_offload.ts";
import { FrameBatch, HEADROOM, SLOT_SIZE } from "../core/frames.ts";
import type { WarmUpResult, WarmUpState } from "../core/plug.ts";

/** How many rounds a plug runs its data path on synthetic frames at open. */
export const WARM_UP_ROUNDS = 100;

/**
 * Made-up MACs: this side of a warm-up, and its imaginary peers. Real MACs
 * have either value of the top bit of their last four bytes, and V8 compiles
 * the arithmetic on them for what it has seen: the peers have both.
 */
export const WARM_LOCAL_MAC = [0x02, 0x00, 0x5e, 0x77, 0x61, 0x01];
export const WARM_PEER_MACS = [
  [0x02, 0x00, 0x5e, 0x77, 0x61, 0x02],
  [0x02, 0x00, 0xde, 0x77, 0x61, 0x03],
];
const BROADCAST_MAC = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

/** Payload bytes per segment of the warm-up's TCP super-frame. */
export const WARM_SEGMENT = 1448;

function ethernet(view: DataView, at: number, to: number[], from: number[], type: number): void {
  for (let i = 0; i < 6; i++) {
    view.setUint8(at + i, to[i]);
    view.setUint8(at + 6 + i, from[i]);
  }
  view.setUint16(at + 12, type);
}

function ipv4(view: DataView, at: number, length: number, protocol: number, id: number): void {
  view.setUint8(at, 0x45);
  view.setUint8(at + 1, 0);
  view.setUint16(at + 2, length);
  view.setUint16(at + 4, id);
  view.setUint16(at + 6, 0x4000); // DF
  view.setUint8(at + 8, 64);
  view.setUint8(at + 9, protocol);
  view.setUint32(at + 12, 0xc0000201); // 192.0.2.1
  view.setUint32(at + 16, 0xc0000202); // 192.0.2.2
  let sum = 0;
  view.setUint16(at + 10, 0);
  for (let i = 0; i < 20; i += 2) sum += view.getUint16(at + i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  view.setUint16(at + 10, ~sum & 0xffff);
}

/** Writes an ARP request for 192.0.2.2, broadcast from `from`, at `at`; returns its length (42, unpadded as a TAP hands it over). */
export function arpFrame(view: DataView, at: number, from: number[]): number {
  ethernet(view, at, BROADCAST_MAC, from, 0x0806);
  view.setUint32(at + 14, 0x00010800); // Ethernet, IPv4
  view.setUint32(at + 18, 0x06040001); // lengths, request
  for (let i = 0; i < 6; i++) view.setUint8(at + 22 + i, from[i]);
  view.setUint32(at + 28, 0xc0000201);
  for (let i = 32; i < 38; i++) view.setUint8(at + i, 0);
  view.setUint32(at + 38, 0xc0000202);
  return 42;
}

/** Writes an ICMP echo request of ping's default size at `at`; returns its length (98). */
export function pingFrame(view: DataView, at: number, to: number[], from: number[]): number {
  ethernet(view, at, to, from, 0x0800);
  ipv4(view, at + 14, 84, 1, 0);
  view.setUint32(at + 34, 0x08000000); // echo request, checksum left 0: nobody reads it
  new Uint8Array(view.buffer, view.byteOffset + at + 38, 60).fill(0x5a);
  return 98;
}

/**
 * TCP sequence numbers for the warm-up's segments, taken in turn: a real
 * connection starts at a random one, so V8 must have seen numbers above 2^31
 * and a sequence that wraps past 2^32 within a super-frame before traffic.
 * Code compiled on small ones only is deoptimized by the first large one
 * ("overflow", "lost precision") and allocates until compiled again.
 */
const WARM_SEQUENCES = [1000, 0x7fffe000, 0xffffc000, 0xc0000000];

/** The `n`th of the warm-up's TCP sequence numbers (they repeat). */
export function warmSequence(n: number): number {
  return WARM_SEQUENCES[n % WARM_SEQUENCES.length];
}

/**
 * Writes a TCP segment of `payload` bytes from 192.0.2.1 to 192.0.2.2 with
 * ACK set and its checksum left to whoever completes it (as the kernel hands
 * a TAP a super-frame); returns its length. Its acknowledgment number is its
 * sequence number's other half of the space.
 */
export function tcpFrame(
  view: DataView,
  at: number,
  to: number[],
  from: number[],
  payload: number,
  sequence = 1000,
): number {
  ethernet(view, at, to, from, 0x0800);
  ipv4(view, at + 14, 40 + payload, 6, 1);
  const l4 = at + 34;
  view.setUint32(l4, (40000 << 16) | 5201);
  view.setUint32(l4 + 4, sequence);
  view.setUint32(l4 + 8, (sequence + 0x80000000) >>> 0);
  view.setUint16(l4 + 12, 0x5010); // header length 20, ACK
  view.setUint16(l4 + 14, 502);
  view.setUint32(l4 + 16, 0);
  new Uint8Array(view.buffer, view.byteOffset + l4 + 20, payload).fill(0x5a);
  return 54 + payload;
}

/**
 * Writes a UDP datagram of `payload` bytes from 192.0.2.1 to 192.0.2.2 with
 * IPv4 identification `id` and a valid checksum, as a connected socket sends
 * them (the next one has the next identification); returns its length.
 */
export function udpFrame(
  view: DataView,
  at: number,
  to: number[],
  from: number[],
  payload: number,
  id: number,
): number {
  ethernet(view, at, to, from, 0x0800);
  ipv4(view, at + 14, 28 + payload, 17, id);
  const l4 = at + 34;
  view.setUint32(l4, (40001 << 16) | 5201);
  view.setUint16(l4 + 4, 8 + payload);
  new Uint8Array(view.buffer, view.byteOffset + l4 + 8, payload).fill(0x5a);
  // The pseudo-header's sum in the field, completed as the kernel leaves it to a NIC.
  const pseudo = 0xc000 + 0x0201 + 0xc000 + 0x0202 + 17 + 8 + payload;
  view.setUint16(l4 + 6, ~finishChecksum(pseudo) & 0xffff);
  completeChecksum(view, at, 42 + payload, 34, 6);
  return 42 + payload;
}

/** Datagrams of one UDP flow a TAP's warm-up sends in a row, to be merged as a run. */
export const WARM_UDP_RUN = 3;

/**
 * Writes an IPv6 router solicitation to all routers (ff02::2, MAC
 * 33:33:00:00:00:02), as an interface sends when it comes up; returns its
 * length (70).
 */
export function routerSolicitation(view: DataView, at: number, from: number[]): number {
  ethernet(view, at, [0x33, 0x33, 0, 0, 0, 2], from, 0x86dd);
  const l3 = at + 14;
  view.setUint32(l3, 0x60000000);
  view.setUint16(l3 + 4, 16);
  view.setUint8(l3 + 6, 58); // ICMPv6
  view.setUint8(l3 + 7, 255);
  view.setUint32(l3 + 8, 0xfe800000);
  view.setUint32(l3 + 12, 0);
  view.setUint32(l3 + 16, 0x00005eff);
  view.setUint32(l3 + 20, 0xfe776101);
  view.setUint32(l3 + 24, 0xff020000);
  view.setUint32(l3 + 28, 0);
  view.setUint32(l3 + 32, 0);
  view.setUint32(l3 + 36, 2);
  view.setUint32(l3 + 40, 0x85000000); // router solicitation, checksum left 0: nobody reads it
  view.setUint32(l3 + 44, 0);
  view.setUint16(l3 + 48, 0x0101); // source link-layer address option
  for (let i = 0; i < 6; i++) view.setUint8(l3 + 50 + i, from[i]);
  return 70;
}

/**
 * A MAC that a network plug's warm-up reaches at its own descriptors (the
 * vxvde plug learns it at its own socket), so that what the TAP sends to it
 * comes back in: the cable's warm-up gets a backlog both ways.
 */
export const WARM_LOOP_MAC = [0x02, 0x00, 0x5e, 0x77, 0x61, 0x04];

/** Pure ACKs a TAP's cable warm-up sends to {@linkcode WARM_LOOP_MAC} in a row, to come back as a run. */
export const WARM_ACK_RUN = 12;

/** Segments of each of the two super-frames a TAP's warm-up sends to {@linkcode WARM_LOOP_MAC}. */
export const WARM_BURST_SEGMENTS = 40;

/** What {@linkcode warmNetworkPlug} needs of a network plug (vxvde, vxlan). */
interface NetworkPlug {
  readonly largestWholeFrame?: number;
  receive(batch: FrameBatch, readyMask: number): boolean;
  send(batch: FrameBatch): void;
}

/**
 * A network plug's own warm-up (`Plug.warmUp`) on its warm-up state: each
 * round the state's input in (with `readyMask(round)`), then out a ping
 * reply to a peer it learned, a broadcast, and TCP frames, full and shorter,
 * every other round one longer than the route carries whole (in pieces on a
 * keyed network), with a slot the other plug dropped; what it sent is
 * drained. Ends the state.
 */
export function warmNetworkPlug(
  plug: NetworkPlug,
  state: WarmUpState,
  batch: FrameBatch,
  readyMask: (round: number) => number,
): WarmUpResult {
  try {
    const framesView = new DataView(batch.bytes.buffer);
    const full = (plug.largestWholeFrame ?? 1464) - 54;
    for (let round = 0; round < WARM_UP_ROUNDS; round++) {
      state.feed(round);
      batch.count = 0;
      plug.receive(batch, readyMask(round));
      const peer = WARM_PEER_MACS[round % 2];
      batch.count = 0;
      const slots = [
        pingFrame(framesView, batch.offset(0), peer, WARM_LOCAL_MAC),
        round % 2 === 0
          ? arpFrame(framesView, batch.offset(1), WARM_LOCAL_MAC)
          : routerSolicitation(framesView, batch.offset(1), WARM_LOCAL_MAC),
        tcpFrame(framesView, batch.offset(2), peer, WARM_LOCAL_MAC, full, warmSequence(round)),
        tcpFrame(framesView, batch.offset(3), peer, WARM_LOCAL_MAC, full, warmSequence(round)),
        tcpFrame(framesView, batch.offset(4), peer, WARM_LOCAL_MAC, full - 100),
        round % 2 === 0
          ? 0
          : tcpFrame(framesView, batch.offset(5), peer, WARM_LOCAL_MAC, full + 100),
        0, // a slot the other plug dropped
      ];
      for (const slotLength of slots) batch.lengths[batch.count++] = slotLength;
      plug.send(batch);
      state.drain();
    }
  } catch {
    // A plug that cannot warm up only starts slower.
  }
  return state.end();
}

/**
 * `count` UDP sockets, each bound to a port of its own on 127.0.0.1, and
 * their addresses: what a network plug's warm-up uses in place of its own
 * sockets. Undefined, with none left open, where the loopback is down.
 */
export function loopbackSockets(
  count: number,
): { fds: number[]; addresses: SocketAddress[] } | undefined {
  const fds: number[] = [];
  try {
    for (let i = 0; i < count; i++) fds.push(udpSocket(AF_INET));
    const loopback = SocketAddress.parse("127.0.0.1", 0, AF_INET)!;
    for (const fd of fds) bindSocket(fd, loopback);
    return { fds, addresses: fds.map(localAddress) };
  } catch {
    for (const fd of fds) closeQuietly(fd);
    return undefined;
  }
}

/**
 * The other end of a network plug's warm-up: a batch of its own, in whose
 * first slot it makes the frames it sends (after `prefix` bytes of
 * encapsulation), and a datagram vector over it to read what the plug sends.
 */
export class WarmUpPeer {
  readonly batch = new FrameBatch(8);
  readonly view = new DataView(this.batch.bytes.buffer);
  /** Where, in the batch's bytes, the frame of the next datagram it sends is made. */
  readonly at = this.batch.offset(0);
  readonly vector: DatagramVector;

  constructor(prefix: number) {
    const batch = this.batch;
    this.vector = new DatagramVector(batch.bytes, SLOT_SIZE, HEADROOM - prefix, batch.capacity);
  }
}
