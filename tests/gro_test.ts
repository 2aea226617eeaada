/**
 * Receive offload: coalesceFrames merges the segments of one TCP stream (or the
 * datagrams of one UDP flow) in a batch back into one super-frame, and only
 * those Linux's GRO would merge.
 */

import assert from "node:assert/strict";
import { FrameBatch } from "../core/frames.ts";
import { coalesceFrames, MERGES_UDP, Segmenter, VNET_HEADER } from "../plugs/_offload.ts";
import { hostTest, requirements } from "./_harness.ts";
import { onesSum, writeFlowFrame } from "./fixtures/udp_flow.ts";

const PAYLOAD = 10_000;
const MSS = 1448;

/** A TCP super-frame of PAYLOAD bytes, with timestamps, as the kernel hands one over. */
function superFrame(ipv6: boolean): Uint8Array {
  const l3 = 14, ipHeader = ipv6 ? 40 : 20, l4 = l3 + ipHeader, header = l4 + 32;
  const frame = new Uint8Array(header + PAYLOAD);
  const view = new DataView(frame.buffer);
  frame.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
  view.setUint16(12, ipv6 ? 0x86dd : 0x0800);
  if (ipv6) {
    view.setUint32(l3, 0x60000000);
    view.setUint16(l3 + 4, 32 + PAYLOAD);
    frame[l3 + 6] = 6;
    frame[l3 + 7] = 64;
    frame[l3 + 8] = 0xfd;
    frame[l3 + 23] = 1;
    frame[l3 + 24] = 0xfd;
    frame[l3 + 39] = 2;
  } else {
    frame.set([0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], l3);
  }
  view.setUint16(l4, 40000);
  view.setUint16(l4 + 2, 5201);
  view.setUint32(l4 + 4, 0xffffe000); // the sequence numbers wrap within the frame
  view.setUint32(l4 + 8, 777);
  frame[l4 + 12] = 8 << 4;
  frame[l4 + 13] = 0x18; // ACK, PSH
  view.setUint16(l4 + 14, 500);
  frame.set([1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7], l4 + 20);
  for (let i = header; i < frame.length; i++) frame[i] = (i * 7) & 0xff;
  return frame;
}

/** The super-frame cut into frames in a batch, as they arrive from the network. */
function segmentsOf(frame: Uint8Array, ipv6: boolean): { batch: FrameBatch; view: DataView } {
  // As a TAP does: the super-frame after the batch's slots, cut into them.
  const segmenter = new Segmenter(9234);
  const batch = new FrameBatch(16);
  const view = new DataView(batch.bytes.buffer);
  batch.bytes.set(frame, batch.superFrameAt);
  const gsoType = ipv6 ? 4 : 1;
  assert.ok(segmenter.load(batch, batch.superFrameAt, frame.length, gsoType, MSS, ipv6 ? 54 : 34));
  while (segmenter.pending) {
    batch.lengths[batch.count] = segmenter.next(batch, view, batch.offset(batch.count));
    batch.count++;
  }
  return { batch, view };
}

/** The super-frame a writev of the merged run hands the kernel, less its virtio-net header. */
function merged(batch: FrameBatch, count: number, headerLength: number): Uint8Array {
  const parts = [batch.frame(0)];
  for (let k = 1; k < count; k++) parts.push(batch.frame(k).subarray(headerLength));
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

for (const ipv6 of [false, true]) {
  const family = ipv6 ? "IPv6" : "IPv4";
  Deno.test(`${family}: the segments of a stream merge back into the super-frame`, () => {
    const original = superFrame(ipv6);
    const { batch, view } = segmentsOf(original, ipv6);
    assert.equal(batch.count, Math.ceil(PAYLOAD / MSS));
    const l4 = ipv6 ? 54 : 34, headerLength = l4 + 32;

    assert.equal(coalesceFrames(batch, view, 0), batch.count);
    const header = batch.offset(0) - VNET_HEADER;
    assert.deepEqual(
      [view.getUint8(header), view.getUint8(header + 1)],
      [1, ipv6 ? 4 : 1],
      "NEEDS_CSUM and the GSO type",
    );
    assert.deepEqual(
      [2, 4, 6, 8].map((at) => view.getUint16(header + at, true)),
      [headerLength, MSS, l4, 16],
      "hdr_len, gso_size, csum_start, csum_offset",
    );

    const whole = merged(batch, batch.count, headerLength);
    const wholeView = new DataView(whole.buffer);
    assert.equal(whole.length, original.length);
    assert.deepEqual(whole.subarray(headerLength), original.subarray(headerLength));
    assert.equal(whole[l4 + 13], 0x18, "the last segment's PSH is kept");
    if (!ipv6) {
      assert.equal(wholeView.getUint16(16), 20 + 32 + PAYLOAD);
      assert.equal(onesSum(whole.subarray(14, 34)), 0xffff, "IPv4 header checksum");
    } else assert.equal(wholeView.getUint16(18), 32 + PAYLOAD);
    // The field holds the pseudo-header's sum: completing it over the segment gives a valid one.
    const addresses = ipv6 ? whole.subarray(22, 54) : whole.subarray(26, 34);
    const pseudo = onesSum(addresses) + 6 + (whole.length - l4);
    assert.equal(wholeView.getUint16(l4 + 16), onesSum(new Uint8Array(0), pseudo));
    const completed = ~onesSum(whole.subarray(l4)) & 0xffff;
    wholeView.setUint16(l4 + 16, completed);
    assert.equal(onesSum(whole.subarray(l4), pseudo), 0xffff, "TCP checksum once completed");
  });
}

Deno.test("a run ends at a bad checksum, a gap, another stream, or a frame that disagrees with its header", () => {
  const l4 = 34;
  const cases: [string, (batch: FrameBatch, view: DataView) => void, number][] = [
    ["payload byte flipped in frame 3", (b) => b.bytes[b.offset(3) + 100] ^= 1, 3],
    ["frame 2 missing", (b) => {
      b.bytes.copyWithin(b.offset(2), b.offset(3), b.offset(3) + b.lengths[3]);
    }, 2],
    ["frame 2 of another port", (b, v) => {
      v.setUint16(b.offset(2) + l4, 40001);
      v.setUint16(b.offset(2) + l4 + 16, v.getUint16(b.offset(2) + l4 + 16) - 1);
    }, 2],
    ["frame 1 with another ACK number", (b, v) => {
      v.setUint32(b.offset(1) + l4 + 8, 778);
      v.setUint16(b.offset(1) + l4 + 16, v.getUint16(b.offset(1) + l4 + 16) - 1);
    }, 1],
    ["frame 0 shorter than its IP header says", (b) => b.lengths[0] -= 2, 1],
  ];
  for (const [what, change, expected] of cases) {
    const { batch, view } = segmentsOf(superFrame(false), false);
    change(batch, view);
    assert.equal(coalesceFrames(batch, view, 0), expected, what);
  }
});

Deno.test("a segment with PSH, or a frame that is not TCP, is sent as it is", () => {
  const { batch, view } = segmentsOf(superFrame(false), false);
  assert.equal(coalesceFrames(batch, view, batch.count - 1), 1, "the last segment, with PSH");
  view.setUint8(batch.offset(0) + 23, 17); // UDP
  assert.equal(coalesceFrames(batch, view, 0), 1);
  batch.lengths[1] = 60;
  assert.equal(coalesceFrames(batch, view, 1), 1, "too short to be a TCP segment with data");
});

/** What merging UDP needs of the kernel. */
const udpMerges = requirements([], [{
  ok: MERGES_UDP,
  why: "Linux 6.2 or later (GSO_UDP_L4 on a TAP)",
}], {
  root: false,
});

/** `count` datagrams of one UDP flow in a batch, 1000 bytes each but the last (500). */
function datagramsOf(count: number, ipv6: boolean): { batch: FrameBatch; view: DataView } {
  const batch = new FrameBatch(16);
  for (let j = 0; j < count; j++) {
    batch.lengths[j] = writeFlowFrame(
      batch.bytes,
      batch.offset(j),
      j,
      ipv6,
      j < count - 1 ? 1000 : 500,
    );
  }
  batch.count = count;
  return { batch, view: new DataView(batch.bytes.buffer) };
}

for (const ipv6 of [false, true]) {
  const family = ipv6 ? "IPv6" : "IPv4";
  hostTest(
    `${family}: the datagrams of one UDP flow merge into one super-datagram for the kernel to cut`,
    udpMerges,
    () => {
      const { batch, view } = datagramsOf(6, ipv6);
      const l4 = ipv6 ? 54 : 34, headerLength = l4 + 8, payload = 5 * 1000 + 500;
      const originals = [0, 1, 2, 3, 4, 5].map((k) => batch.frame(k).slice());

      assert.equal(coalesceFrames(batch, view, 0), 6);
      const header = batch.offset(0) - VNET_HEADER;
      assert.deepEqual(
        [view.getUint8(header), view.getUint8(header + 1)],
        [1, 5],
        "NEEDS_CSUM, GSO_UDP_L4",
      );
      assert.deepEqual(
        [2, 4, 6, 8].map((at) => view.getUint16(header + at, true)),
        [headerLength, 1000, l4, 6],
        "hdr_len, gso_size, csum_start, csum_offset",
      );
      const whole = merged(batch, 6, headerLength);
      const wholeView = new DataView(whole.buffer);
      assert.equal(whole.length, headerLength + payload);
      for (let k = 0; k < 6; k++) {
        const at = headerLength + k * 1000;
        assert.deepEqual(
          whole.subarray(at, at + originals[k].length - headerLength),
          originals[k].subarray(headerLength),
        );
      }
      assert.equal(wholeView.getUint16(l4 + 4), 8 + payload, "the UDP length of the whole");
      if (!ipv6) {
        assert.equal(wholeView.getUint16(16), 20 + 8 + payload);
        assert.equal(onesSum(whole.subarray(14, 34)), 0xffff, "IPv4 header checksum");
        assert.equal(wholeView.getUint16(18), 0xfffa, "the first datagram's identification");
      } else assert.equal(wholeView.getUint16(18), 8 + payload);
      const addresses = ipv6 ? whole.subarray(22, 54) : whole.subarray(26, 34);
      const pseudo = onesSum(addresses) + 17 + 8 + payload;
      assert.equal(
        wholeView.getUint16(l4 + 6),
        onesSum(new Uint8Array(0), pseudo),
        "pseudo-header sum",
      );
    },
  );
}

hostTest(
  "a UDP run ends at a bad checksum, none, another port, a gap in identifications or a longer datagram",
  udpMerges,
  () => {
    const l4 = 34;
    const cases: [string, (batch: FrameBatch, view: DataView) => void, number][] = [
      ["payload byte flipped in datagram 3", (b) => b.bytes[b.offset(3) + 100] ^= 1, 3],
      ["datagram 0 without a checksum", (b, v) => v.setUint16(b.offset(0) + l4 + 6, 0), 1],
      ["datagram 2 to another port", (b, v) => {
        v.setUint16(b.offset(2) + l4 + 2, 5401);
        v.setUint16(b.offset(2) + l4 + 6, v.getUint16(b.offset(2) + l4 + 6) - 1);
      }, 2],
      ["datagram 2 missing", (b) => {
        b.bytes.copyWithin(b.offset(2), b.offset(3), b.offset(3) + b.lengths[3]);
        b.lengths[2] = b.lengths[3];
      }, 2],
      ["datagram 1 shorter: the run ends with it", (b) => {
        b.lengths[1] = writeFlowFrame(b.bytes, b.offset(1), 1, false, 600);
      }, 2],
      ["datagram 0 shorter than its IP header says", (b) => b.lengths[0] -= 2, 1],
    ];
    for (const [what, change, expected] of cases) {
      const { batch, view } = datagramsOf(6, false);
      change(batch, view);
      assert.equal(coalesceFrames(batch, view, 0), expected, what);
    }
  },
);

hostTest(
  "empty slots between a UDP flow's datagrams (frames joined from pieces) are passed over",
  udpMerges,
  () => {
    const batch = new FrameBatch(16);
    const lengths = [1000, 0, 1000, 0, 0, 1000, 500];
    let j = 0;
    lengths.forEach((payload, slot) => {
      batch.lengths[slot] = payload === 0
        ? 0
        : writeFlowFrame(batch.bytes, batch.offset(slot), j++, false, payload);
    });
    batch.count = lengths.length;
    const view = new DataView(batch.bytes.buffer);
    assert.equal(coalesceFrames(batch, view, 0), 7, "the run spans every slot");
    assert.equal(
      view.getUint16(batch.offset(0) + 14 + 2),
      20 + 8 + 3500,
      "four datagrams' payloads",
    );
  },
);
