/**
 * `qemu://`: the socket QEMU's stream backend connects to. Here a test client
 * speaks QEMU's framing (4-byte big-endian length, then the frame) to a
 * `vdeno plug tap://tap0 qemu://...` and asks the host behind the TAP for its
 * MAC address with ARP. The whole path with a real QEMU is in cloud_test.ts.
 */

import assert from "node:assert/strict";
import { parseQemu } from "../plugs/qemu.ts";
import { VnlError } from "../src/vnl.ts";
import { Lan, prerequisites, sleep } from "./_harness.ts";

Deno.test("qemu:// takes a Unix socket path or a numeric ADDRESS:PORT", () => {
  assert.deepEqual(parseQemu("/run/vm0.sock"), { kind: "unix", path: "/run/vm0.sock" });
  assert.deepEqual(parseQemu("vm0.sock"), { kind: "unix", path: "vm0.sock" });
  const tcp = parseQemu("127.0.0.1:5555");
  assert.equal(tcp.kind === "tcp" && tcp.address.toString(), "127.0.0.1:5555");
  const six = parseQemu("[::1]:5555");
  assert.equal(six.kind === "tcp" && six.address.toString(), "[::1]:5555");
  const any = parseQemu(":5555");
  assert.equal(any.kind === "tcp" && any.address.toString(), "0.0.0.0:5555");
  assert.throws(() => parseQemu(""), VnlError);
  assert.throws(() => parseQemu("127.0.0.1:0"), VnlError);
  assert.throws(() => parseQemu("/" + "x".repeat(200)), VnlError);
});

const CLIENT_MAC = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/** An ARP request from 10.0.0.2 (CLIENT_MAC) for `target`, 10.0.0.1. */
function arpRequest(): Uint8Array {
  const frame = new Uint8Array(42);
  frame.fill(0xff, 0, 6);
  frame.set(CLIENT_MAC, 6);
  frame.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12);
  frame.set(CLIENT_MAC, 22);
  frame.set([10, 0, 0, 2], 28);
  frame.set([10, 0, 0, 1], 38);
  return frame;
}

function framed(frame: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(4 + frame.length);
  new DataView(bytes.buffer).setUint32(0, frame.length);
  bytes.set(frame, 4);
  return bytes;
}

/** Reads QEMU-framed frames until an ARP reply arrives; returns the sender MAC it announces. */
async function arpReply(connection: Deno.UnixConn): Promise<string> {
  let buffered = new Uint8Array(0);
  const chunk = new Uint8Array(65536);
  for (;;) {
    while (buffered.length >= 4) {
      const length = new DataView(buffered.buffer, buffered.byteOffset).getUint32(0);
      assert.ok(length >= 14 && length <= 9234, `implausible frame length ${length}`);
      if (buffered.length < 4 + length) break;
      const frame = buffered.slice(4, 4 + length);
      buffered = buffered.slice(4 + length);
      const isArpReply = frame[12] === 0x08 && frame[13] === 0x06 && frame[21] === 2;
      if (isArpReply) {
        assert.deepEqual([...frame.subarray(0, 6)], CLIENT_MAC);
        return [...frame.subarray(22, 28)].map((b) => b.toString(16).padStart(2, "0")).join(":");
      }
    }
    const count = await connection.read(chunk);
    if (count === null) throw new Error("vdeno closed the connection");
    const joined = new Uint8Array(buffered.length + count);
    joined.set(buffered);
    joined.set(chunk.subarray(0, count), buffered.length);
    buffered = joined;
  }
}

async function connectWhenListening(path: string): Promise<Deno.UnixConn> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      return await Deno.connect({ transport: "unix", path });
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

Deno.test("qemu:// carries QEMU-framed frames both ways and takes the VM back after it reconnects", async (t) => {
  if (!(await prerequisites(t, []))) return;
  const directory = await Deno.makeTempDir({ prefix: "vdeno-qemu-" });
  const path = `${directory}/vm.sock`;
  try {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    const plug = host.vdeno(["plug", "tap://tap0", `qemu://${path}`]);
    await host.waitForLink("tap0");
    await host.configure("tap0", "10.0.0.1/24");
    const tapMac = (await host.sh(["cat", "/sys/class/net/tap0/address"])).trim();
    for (let round = 1; round <= 2; round++) {
      const connection = await connectWhenListening(path);
      try {
        // Split inside the length header and inside the frame, as a stream may be.
        const bytes = framed(arpRequest());
        for (const [from, to] of [[0, 2], [2, 20], [20, bytes.length]]) {
          await connection.write(bytes.subarray(from, to));
          await sleep(20);
        }
        assert.equal(await arpReply(connection), tapMac, `round ${round}`);
      } finally {
        connection.close();
      }
    }
    await plug.stop();
    assert.ok(!(await Deno.stat(path).then(() => true, () => false)), "socket file left behind");
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
});
