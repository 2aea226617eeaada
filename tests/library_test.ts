/** mod.ts: a Deno program joins a VDE network and talks to vde_plug's stream mode. */

import assert from "node:assert/strict";
import { Lan, prerequisites } from "./_harness.ts";
import { openVde, VnlError } from "../mod.ts";

const PEER = new URL("./fixtures/library_peer.ts", import.meta.url).pathname;

function streamFrame(payload: string): Uint8Array {
  const frame = new Uint8Array(60);
  frame.fill(0xff, 0, 6);
  frame.set([0x02, 0, 0, 0, 0, 0x43], 6);
  frame.set([0x88, 0xb5], 12);
  frame.set(new TextEncoder().encode(payload), 14);
  return new Uint8Array([0, frame.length, ...frame]);
}

Deno.test("a library user and vde_plug exchange frames over a vxvde network", async (t) => {
  if (!(await prerequisites(t, ["vde_plug"]))) return;
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const cplug = a.spawn(["vde_plug", "vxvde://239.5.0.1"], { stdin: "piped" });
  const library = b.spawn([
    Deno.execPath(),
    "run",
    "-A",
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
});

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
