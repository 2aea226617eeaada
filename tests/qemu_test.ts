/**
 * `qemu://`: the socket QEMU's stream backend connects to. Here a test client
 * speaks QEMU's framing (4-byte big-endian length, then the frame) to a
 * `vdeno plug tap://tap0 qemu://...` and asks the host behind the TAP for its
 * MAC address with ARP. The whole path with a real QEMU is in cloud_test.ts.
 */

import assert from "node:assert/strict";
import { parseQemu } from "../plugs/qemu.ts";
import { VnlError } from "../core/vnl.ts";
import { hostTest, Lan, sleep, VDENO } from "./_harness.ts";

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

/** Reads QEMU-framed frames from a connection, checking that the stream stays in step. */
class FrameReader {
  readonly #connection: Deno.UnixConn;
  readonly #chunk = new Uint8Array(65536);
  #buffered = new Uint8Array(0);
  #read?: Promise<number | null>;

  constructor(connection: Deno.UnixConn) {
    this.#connection = connection;
  }

  /** The next frame, or undefined when none arrives within `timeoutMs`. */
  async next(timeoutMs: number): Promise<Uint8Array | undefined> {
    for (;;) {
      if (this.#buffered.length >= 4) {
        const length = new DataView(this.#buffered.buffer, this.#buffered.byteOffset).getUint32(0);
        assert.ok(length >= 14 && length <= 9234, `implausible frame length ${length}`);
        if (this.#buffered.length >= 4 + length) {
          const frame = this.#buffered.slice(4, 4 + length);
          this.#buffered = this.#buffered.slice(4 + length);
          return frame;
        }
      }
      // A read that timed out stays pending and is picked up by the next call.
      this.#read ??= this.#connection.read(this.#chunk);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const count = await Promise.race([this.#read, timeout]);
      clearTimeout(timer);
      if (count === "timeout") return undefined;
      this.#read = undefined;
      if (count === null) throw new Error("vdeno closed the connection");
      const joined = new Uint8Array(this.#buffered.length + count);
      joined.set(this.#buffered);
      joined.set(this.#chunk.subarray(0, count), this.#buffered.length);
      this.#buffered = joined;
    }
  }
}

/** Reads frames until an ARP reply arrives; returns the sender MAC it announces. */
async function arpReply(reader: FrameReader): Promise<string> {
  for (;;) {
    const frame = await reader.next(15_000);
    if (!frame) throw new Error("No ARP reply within 15 s");
    if (frame[12] === 0x08 && frame[13] === 0x06 && frame[21] === 2) {
      assert.deepEqual([...frame.subarray(0, 6)], CLIENT_MAC);
      return [...frame.subarray(22, 28)].map((b) => b.toString(16).padStart(2, "0")).join(":");
    }
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

hostTest(
  "qemu:// carries QEMU-framed frames both ways and takes the VM back after it reconnects",
  [],
  async () => {
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
          assert.equal(await arpReply(new FrameReader(connection)), tapMac, `round ${round}`);
        } finally {
          connection.close();
        }
      }
      await plug.stop();
      assert.ok(!(await Deno.stat(path).then(() => true, () => false)), "socket file left behind");
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);

// Sends `count` UDP datagrams of 8000 bytes to 10.0.0.2 as fast as it can.
const FLOOD = (count: number) => `
const socket = Deno.listenDatagram({ transport: "udp", hostname: "10.0.0.1", port: 0 });
const payload = new Uint8Array(8000);
for (let i = 0; i < ${count}; i++) await socket.send(payload, { transport: "udp", hostname: "10.0.0.2", port: 9 });
socket.close();
`;

hostTest(
  "qemu:// drops frames for a VM that does not read, keeps the stream in step, and goes on when it reads again",
  [],
  async () => {
    const directory = await Deno.makeTempDir({ prefix: "vdeno-qemu-" });
    const path = `${directory}/vm.sock`;
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      host.vdeno(["plug", "--name", "stuckvm", "tap://tap0", `qemu://${path}`]);
      await host.waitForLink("tap0");
      await host.configure("tap0", "10.0.0.1/24");
      // Jumbo frames: a batch then spans several socket buffers' worth of data, so the kernel
      // takes part of a write and some frame is cut in two (small ones rarely are, on Unix sockets).
      await host.sh(["ip", "link", "set", "tap0", "mtu", "9000"]);
      // The client's MAC for 10.0.0.2, so the kernel sends the flood without asking ARP first.
      await host.sh([
        "ip",
        "neigh",
        "add",
        "10.0.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "tap0",
      ]);
      const tapMac = (await host.sh(["cat", "/sys/class/net/tap0/address"])).trim();
      const connection = await connectWhenListening(path);
      try {
        // Far more than the socket holds while nobody reads it.
        const flood = await host.run([
          Deno.execPath(),
          "eval",
          "--quiet",
          "--unstable-net",
          FLOOD(5_000),
        ], {
          timeoutMs: 60_000,
        });
        assert.equal(flood.code, 0, flood.stderr);
        const status = await host.run([...VDENO, "status", "--json", "stuckvm"]);
        assert.equal(status.code, 0, status.stderr);
        assert.match(status.stdout, /"dropQueueFull":\s*[1-9]/, "no frame was dropped");
        // What the socket held must parse frame by frame, and so must what follows: the rest
        // of a frame the socket took only part of, then the answer to a new request.
        const reader = new FrameReader(connection);
        let backlog = 0;
        while (await reader.next(500)) backlog++;
        assert.ok(backlog > 10, `only ${backlog} frames were waiting`);
        await connection.write(framed(arpRequest()));
        assert.equal(await arpReply(reader), tapMac);
      } finally {
        connection.close();
      }
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);
