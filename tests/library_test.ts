/** mod.ts: the library over an in-memory plug, and a Deno program that talks to vde_plug. */

import assert from "node:assert/strict";
import { hostTest, Lan } from "./_harness.ts";
import { openVde, VdeConnection, VnlError } from "../mod.ts";
import { MAX_FRAME } from "../core/frames.ts";
import { MemoryPlug, numberedFrame, sequenceOf } from "./_memory_plug.ts";

const PEER = new URL("./fixtures/library_peer.ts", import.meta.url).pathname;

function streamFrame(payload: string): Uint8Array {
  const frame = new Uint8Array(60);
  frame.fill(0xff, 0, 6);
  frame.set([0x02, 0, 0, 0, 0, 0x43], 6);
  frame.set([0x88, 0xb5], 12);
  frame.set(new TextEncoder().encode(payload), 14);
  return new Uint8Array([0, frame.length, ...frame]);
}

hostTest(
  "a library user and vde_plug exchange frames over a vxvde network",
  ["vde_plug"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    const cplug = a.spawn(["vde_plug", "vxvde://239.5.0.1"], { stdin: "piped" });
    const library = b.spawn([
      Deno.execPath(),
      "run",
      // Exactly the permissions the README names for the library.
      "--allow-net",
      "--allow-ffi",
      "--quiet",
      PEER,
      "vxvde://239.5.0.1",
      "hello-from-deno",
      "hello-from-c",
    ]);
    // vde_plug writes the greeting to its stdout as a 2-byte length and the frame.
    await cplug.waitForOutput((text) => text.includes("hello-from-deno"), 15_000);
    const writer = cplug.child.stdin.getWriter();
    const answer = streamFrame("hello-from-c");
    const status = library.exited();
    const sender = setInterval(() => writer.write(answer).catch(() => {}), 200);
    await writer.write(answer);
    const { code } = await status;
    clearInterval(sender);
    assert.equal(code, 0, library.stderr);
    assert.match(library.stdout, /got 60 bytes: hello-from-c/);
    const counters = JSON.parse(library.stdout.trim().split("\n").at(-1)!);
    assert.ok(counters.framesOut >= 1 && counters.framesIn >= 1 && counters.sentMulticast >= 1);
    writer.releaseLock();
  },
);

Deno.test("openVde refuses a bad VNL with a VnlError, and a frame of the wrong size with a RangeError", () => {
  assert.throws(() => openVde("vxvde://239.0.0.1/nosuchkey"), VnlError);
  assert.throws(() => openVde("nonsense"), VnlError);
  const file = Deno.makeTempFileSync({ suffix: ".pcap" });
  try {
    using vde = openVde(`pcap://${file}`);
    assert.throws(() => vde.send(new Uint8Array(10)), RangeError);
    assert.throws(() => vde.send(new Uint8Array(10000)), RangeError);
    vde.send(new Uint8Array(60));
    assert.equal(vde.counters.framesOut, 1);
  } finally {
    Deno.removeSync(file);
  }
});

Deno.test("VdeConnection hands a plug's frames to the reader in order, waiting for late ones", async () => {
  const plug = new MemoryPlug();
  using vde = new VdeConnection(plug);
  assert.equal(vde.vnl, "memory://");
  plug.inject(...Array.from({ length: 150 }, (_, i) => numberedFrame(i)));
  plug.inject(new Uint8Array(0), numberedFrame(150));
  const received: number[] = [];
  for (let i = 0; i <= 150; i++) received.push(sequenceOf((await vde.receive())!));
  assert.deepEqual(received, Array.from({ length: 151 }, (_, i) => i));
  // Nothing queued: the reader waits on the plug's descriptor until a frame comes.
  const late = vde.receive();
  setTimeout(() => plug.inject(numberedFrame(500)), 50);
  assert.equal(sequenceOf((await late)!), 500);
  assert.equal(vde.counters.framesIn, 153);
});

Deno.test("VdeConnection's iteration ends when the plug's input ends", async () => {
  const plug = new MemoryPlug();
  using vde = new VdeConnection(plug);
  plug.inject(numberedFrame(1), numberedFrame(2));
  plug.end();
  const received: number[] = [];
  for await (const frame of vde) received.push(sequenceOf(frame));
  assert.deepEqual(received, [1, 2]);
  assert.equal(await vde.receive(), null);
});

Deno.test("VdeConnection sends whole frames of 14 to the largest size, and nothing once closed", async () => {
  const plug = new MemoryPlug();
  const vde = new VdeConnection(plug);
  vde.send(numberedFrame(1));
  vde.send(new Uint8Array(14));
  vde.send(new Uint8Array(MAX_FRAME).fill(0xab));
  assert.throws(() => vde.send(new Uint8Array(13)), RangeError);
  assert.throws(() => vde.send(new Uint8Array(MAX_FRAME + 1)), RangeError);
  assert.deepEqual(plug.sent.map((frame) => frame.length), [60, 14, MAX_FRAME]);
  assert.equal(sequenceOf(plug.sent[0]), 1);
  assert.ok(plug.sent[2].every((byte) => byte === 0xab));
  assert.equal(vde.counters.framesOut, 3);
  vde.close();
  assert.throws(() => vde.send(numberedFrame(2)), /the connection is closed/);
  assert.equal(await vde.receive(), null);
  assert.ok(plug.closed, "the plug was closed with the connection");
});
