/**
 * `udp://`: vdeplug4's point to point UDP link, read with vdeplug4's syntax
 * and interoperating with vde_plug's own udp module.
 */

import assert from "node:assert/strict";
import { parseUdp } from "../plugs/udp.ts";
import { VnlError } from "../core/vnl.ts";
import { type Host, hostTest, Lan } from "./_harness.ts";

Deno.test("udp:// VNLs are split as vdeplug4 splits them", () => {
  const portOnly = parseUdp("5001->127.0.0.1:5000");
  assert.equal(portOnly.local.toString(), "0.0.0.0:5001");
  assert.equal(portOnly.remote.toString(), "127.0.0.1:5000");
  const withHost = parseUdp("10.0.0.1:2000->10.0.0.2:3000");
  assert.equal(withHost.local.toString(), "10.0.0.1:2000");
  assert.equal(withHost.remote.toString(), "10.0.0.2:3000");
  const emptyHost = parseUdp(":2000->10.0.0.2:3000");
  assert.equal(emptyHost.local.toString(), "0.0.0.0:2000");
  const six = parseUdp("::1:2000->::1:3000");
  assert.equal(six.local.toString(), "[::1]:2000");
  assert.equal(six.remote.toString(), "[::1]:3000");
  const named = parseUdp("localhost:2000->localhost:3000");
  assert.equal(named.local.toString(), "127.0.0.1:2000");
  assert.equal(named.remote.toString(), "127.0.0.1:3000");
  const bracketed = parseUdp("2000->[fd00::2]:3000");
  assert.equal(bracketed.local.toString(), "[::]:2000");
  assert.equal(bracketed.remote.toString(), "[fd00::2]:3000");
});

Deno.test("bad udp:// VNLs are refused with a message that says what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["5001", /Missing "->"/],
    ["5001->127.0.0.1", /Missing remote port/],
    ["5001->127.0.0.1:70000", /Bad remote port/],
    ["x->127.0.0.1:5000", /Bad local port/],
    ["host.invalid:1->127.0.0.1:5000", /Bad local address.*\/etc\/hosts/],
    ["::1:1->127.0.0.1:5000", /Bad local address/],
  ];
  for (const [rest, message] of cases) {
    assert.throws(() => parseUdp(rest), (error: Error) => {
      assert.ok(error instanceof VnlError, `${rest}: ${error}`);
      assert.match(error.message, message);
      return true;
    });
  }
});

type Peer = "vdeno" | "vde_plug";

function startPlug(host: Host, peer: Peer, vnl: string) {
  return peer === "vdeno"
    ? host.vdeno(["plug", "tap://tap0", vnl])
    : host.spawn(["vde_plug", "tap://tap0", vnl]);
}

for (const [first, second] of [["vdeno", "vde_plug"], ["vdeno", "vdeno"]] as const) {
  hostTest(
    `${first} and ${second} ping each other over a udp:// link`,
    ["vde_plug", "ping"],
    async () => {
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      startPlug(a, first, `udp://${a.address}:5000->${b.address}:6000`);
      startPlug(b, second, `udp://6000->${a.address}:5000`);
      await a.waitForLink("tap0");
      await b.waitForLink("tap0");
      await a.configure("tap0", "10.0.0.1/24");
      await b.configure("tap0", "10.0.0.2/24");
      assert.ok(await a.pingable("10.0.0.2"), `${first} cannot ping ${second}`);
      assert.ok(await b.pingable("10.0.0.1"), `${second} cannot ping ${first}`);
    },
  );
}

// Sending points datagram i at the i-th frame to send, which is not slot i
// when slots were dropped; receiving must still fill slot i.
const SLOT_CHECK = `
import { UdpPlug } from "${new URL("../plugs/udp.ts", import.meta.url)}";
import { FrameBatch } from "${new URL("../core/frames.ts", import.meta.url)}";
const a = new UdpPlug("a", "127.0.0.1:7001->127.0.0.1:7002");
const b = new UdpPlug("b", "127.0.0.1:7002->127.0.0.1:7001");
const batch = new FrameBatch(4);
batch.count = 2;
batch.lengths[0] = 0;
batch.bytes.fill(0x11, batch.offset(1), batch.offset(1) + 60);
batch.lengths[1] = 60;
a.send(batch);
const fromA = new FrameBatch(4);
const fromB = new FrameBatch(4);
fromB.push(new Uint8Array(60).fill(0x22));
b.send(fromB);
batch.bytes.fill(0);
batch.count = 0;
const deadline = Date.now() + 5000;
while ((batch.count === 0 || fromA.count === 0) && Date.now() < deadline) {
  if (batch.count === 0) a.receive(batch, 1);
  if (fromA.count === 0) b.receive(fromA, 1);
  await new Promise((resolve) => setTimeout(resolve, 10));
}
console.log(JSON.stringify({
  atA: [...batch.frame(0)].slice(0, 4),
  atB: [...fromA.frame(0)].slice(0, 4),
}));
a.close();
b.close();
`;

hostTest(
  "udp:// receives into the right slots after sending a batch with dropped slots",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    const result = await host.run([Deno.execPath(), "eval", "--quiet", SLOT_CHECK]);
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), {
      atA: [0x22, 0x22, 0x22, 0x22],
      atB: [0x11, 0x11, 0x11, 0x11],
    });
  },
);
