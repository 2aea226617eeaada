/**
 * `vlan://`: vdeplug_vlan's syntax, and what happens to each frame on the way
 * out and in, on an in-memory inner network (no root). vdeno and vde_plug on
 * one VLAN, with the tag on the wire, are in vdeplug_test.ts and
 * family_test.ts.
 */

import assert from "node:assert/strict";
import { FrameBatch } from "../core/frames.ts";
import { VnlError } from "../core/vnl.ts";
import { parseVlan, VlanPlug } from "../plugs/vlan.ts";
import { MemoryPlug } from "./_memory_plug.ts";

const MACS = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1];
const PAYLOAD = [0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4];

function untagged(type = 0x0800): Uint8Array {
  return new Uint8Array([...MACS, type >> 8, type & 0xff, ...PAYLOAD]);
}

function tagged(vlan: number, tpid = 0x8100, type = 0x0800): Uint8Array {
  return new Uint8Array([
    ...MACS,
    tpid >> 8,
    tpid & 0xff,
    vlan >> 8,
    vlan & 0xff,
    type >> 8,
    type & 0xff,
    ...PAYLOAD,
  ]);
}

function plug(rest: string): { vlan: VlanPlug; inner: MemoryPlug } {
  const inner = new MemoryPlug("memory://");
  const vlan = new VlanPlug(`vlan://${rest}`, rest, () => inner);
  return { vlan, inner };
}

/** What the inner network gets when the member sends `frames`. */
function out(rest: string, frames: Uint8Array[]): Uint8Array[] {
  const { vlan, inner } = plug(rest);
  const batch = new FrameBatch(8);
  for (const frame of frames) batch.push(frame);
  vlan.send(batch);
  vlan.close();
  return inner.sent;
}

/** What the member gets when the inner network delivers `frames`. */
function into(rest: string, frames: Uint8Array[]): Uint8Array[] {
  const { vlan, inner } = plug(rest);
  inner.inject(...frames);
  const batch = new FrameBatch(8);
  vlan.receive(batch, 1);
  vlan.close();
  return [...Array(batch.count).keys()].filter((i) => batch.lengths[i] > 0).map((i) =>
    batch.frame(i).slice()
  );
}

Deno.test("vlan:// takes the untagged VLAN, untag=, tag=, trunk and qinq, slashes or brackets", () => {
  assert.deepEqual(parseVlan("5{vxvde://234.0.0.1}"), {
    untagged: 5,
    untagAs: 0,
    tags: [],
    trunk: false,
    tpid: 0x8100,
    inner: "vxvde://234.0.0.1",
  });
  const brackets = parseVlan("3[untag=4/trunk/tag=10:11-12.0x10]{vde:///tmp/sw}");
  assert.deepEqual(brackets, {
    untagged: 3,
    untagAs: 4,
    tags: [{ member: 10, network: 10 }, { member: 11, network: 12 }, {
      member: 16,
      network: 16,
    }],
    trunk: true,
    tpid: 0x8100,
    inner: "vde:///tmp/sw",
  });
  assert.deepEqual(parseVlan("3/u=4/x/t=10:11-12.0x10{vde:///tmp/sw}"), brackets);
  assert.equal(parseVlan("4/qinq{vxvde://}").tpid, 0x88a8);
  assert.equal(parseVlan("{vlan://5/q{vxvde://}}").inner, "vlan://5/q{vxvde://}");
  assert.throws(() => parseVlan("5"), /Missing nested VNL/);
  assert.throws(() => parseVlan("5000{null://}"), VnlError);
  assert.throws(() => parseVlan("5/colour=red{null://}"), /Unknown key in vlan:\/\/ VNL: colour/);
});

Deno.test("vlan://5 tags what the member sends and delivers only VLAN 5, untagged", () => {
  assert.deepEqual(out("5{m}", [untagged()]), [tagged(5)]);
  assert.deepEqual(out("5{m}", [tagged(7)]), [], "a tagged frame of a VLAN not listed");
  assert.deepEqual(into("5{m}", [tagged(5), tagged(6), untagged()]), [untagged()]);
  // The priority bits of a received tag do not matter; the id does.
  assert.deepEqual(into("5{m}", [tagged(0xa005)]), [untagged()]);
});

Deno.test("vlan:// untag= maps untagged network traffic to a tag the member sees, and back", () => {
  assert.deepEqual(into("0/untag=4{m}", [untagged()]), [tagged(4)]);
  assert.deepEqual(out("0/untag=4{m}", [tagged(4)]), [untagged()]);
  // With untag=, the member's own untagged frames have nowhere to go.
  assert.deepEqual(out("0/untag=4{m}", [untagged()]), []);
  // Without a VLAN or untag=, untagged traffic passes as it is.
  assert.deepEqual(out("{m}", [untagged()]), [untagged()]);
  assert.deepEqual(into("{m}", [untagged()]), [untagged()]);
  assert.deepEqual(out("4095{m}", [untagged()]), [], "VLAN 4095: the member's untagged dropped");
});

Deno.test("vlan:// tag= lists tagged VLANs and maps A-B both ways; trunk passes the others", () => {
  const rest = "/tag=10:11-12{m}";
  assert.deepEqual(out(rest, [tagged(10), tagged(11), tagged(12), tagged(13)]), [
    tagged(10),
    tagged(12),
  ]);
  assert.deepEqual(into(rest, [tagged(10), tagged(11), tagged(12), tagged(13)]), [
    tagged(10),
    tagged(11),
  ]);
  assert.deepEqual(out("/tag=10:11-12/trunk{m}", [tagged(13), tagged(1)]), [
    tagged(13),
  ], "a trunk carries VLAN 13 but not the reserved VLAN 1");
});

Deno.test("vlan:// qinq tags with 0x88a8 and knows only that tag type", () => {
  assert.deepEqual(out("5/qinq{m}", [untagged()]), [tagged(5, 0x88a8)]);
  assert.deepEqual(into("5/qinq{m}", [tagged(5, 0x88a8), tagged(5)]), [untagged()]);
});

Deno.test("vlan:// leaves the inner network's frames whole: 4 bytes fewer for the member", () => {
  const inner = new MemoryPlug("memory://", { largestWholeFrame: 1464 });
  const vlan = new VlanPlug("vlan://5{m}", "5{m}", () => inner);
  assert.equal(vlan.largestWholeFrame, 1460);
  vlan.fitSegmentsTo(1464);
  assert.equal(inner.segmentSize, 1460);
  vlan.close();
});
