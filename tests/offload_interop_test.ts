/**
 * TCP segmentation offload end to end: a TCP stream leaves host 1 through
 * `vdeno plug tap://tap0`, whose TAP hands over 64 KB super-frames that vdeno
 * cuts into segments, and crosses a vxvde group to another vdeno or to
 * vdeplug4's vde_plug in host 2, which echoes it back. The content must come
 * back byte for byte, TSO must have been used and the echo merged on its way
 * into a vdeno TAP (GRO), the kernels must see no bad TCP checksum, and no
 * frame vdeno sent may have needed a fragmented datagram on the 1500-byte
 * underlay.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, type Process, VDENO } from "./_harness.ts";
import { newKeyText } from "../plugs/seal.ts";

const PORT = 5001;
const STREAM_BYTES = 4 * 1024 * 1024;

type Peer = "vdeno" | "vde_plug";

/** Seeded pseudo-random bytes (xorshift32): the content of the stream. */
function streamContent(length: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  let state = seed;
  for (let i = 0; i < words.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    words[i] = state;
  }
  return new Uint8Array(words.buffer, 0, length);
}

// Runs in host 2: accepts one connection, echoes everything it reads, and
// keeps a copy of it in a file. Parameters are spliced in as JSON.
const ECHO_SERVER = `
const [hostname, port, savedTo] = PARAMETERS;
const listener = Deno.listen({ hostname, port });
console.log("listening");
const connection = await listener.accept();
const chunks = [];
const buffer = new Uint8Array(65536);
for (let n; (n = await connection.read(buffer)) !== null;) {
  const chunk = buffer.slice(0, n);
  chunks.push(chunk);
  for (let at = 0; at < n;) at += await connection.write(chunk.subarray(at));
}
await connection.closeWrite();
const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
chunks.reduce((at, c) => (all.set(c, at), at + c.length), 0);
await Deno.writeFile(savedTo, all);
console.log("echoed", all.length);
`;

// Runs in host 1: sends the file's content while it reads the echo, then
// writes what came back to a file.
const ECHO_CLIENT = `
const [hostname, port, readFrom, savedTo] = PARAMETERS;
const content = await Deno.readFile(readFrom);
const connection = await Deno.connect({ hostname, port });
const sending = (async () => {
  for (let at = 0; at < content.length;) at += await connection.write(content.subarray(at));
  await connection.closeWrite();
})();
const chunks = [];
const buffer = new Uint8Array(65536);
for (let n; (n = await connection.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
await sending;
const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
chunks.reduce((at, c) => (all.set(c, at), at + c.length), 0);
await Deno.writeFile(savedTo, all);
console.log("received", all.length);
`;

function denoEval(script: string, parameters: unknown[]): string[] {
  const code = `const PARAMETERS = ${JSON.stringify(parameters)};\n${script}`;
  return [Deno.execPath(), "eval", "--quiet", code];
}

/** The kernel's IP and TCP counters in `host` (/proc/net/snmp is per network namespace). */
async function snmp(host: Host): Promise<Record<string, number>> {
  const lines = (await host.sh(["cat", "/proc/net/snmp"])).trim().split("\n");
  const counters: Record<string, number> = {};
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const names = lines[i].split(/\s+/);
    const values = lines[i + 1].split(/\s+/);
    const group = names[0].replace(/:$/, "");
    names.slice(1).forEach((name, k) => counters[`${group}.${name}`] = Number(values[k + 1]));
  }
  return counters;
}

function delta(
  before: Record<string, number>,
  after: Record<string, number>,
  name: string,
): number {
  assert.ok(name in after, `no ${name} in /proc/net/snmp`);
  return after[name] - before[name];
}

/** Where `a` and `b` first differ, for a message that says more than "not equal". */
function firstDifference(a: Uint8Array, b: Uint8Array): string {
  const shorter = Math.min(a.length, b.length);
  for (let i = 0; i < shorter; i++) {
    if (a[i] !== b[i]) return `they differ first at byte ${i} of ${a.length}`;
  }
  return a.length === b.length ? "they are equal" : `${b.length} bytes instead of ${a.length}`;
}

async function tapCounters(host: Host, name: string): Promise<Record<string, number>> {
  return JSON.parse(await host.sh([...VDENO, "status", "--json", name])).plugs[0].counters;
}

function startPlug(host: Host, peer: Peer, name: string, vnl: string): Process {
  return peer === "vdeno"
    ? host.vdeno(["plug", "--name", name, "tap://tap0", vnl])
    : host.spawn(["vde_plug", "tap://tap0", vnl]);
}

/**
 * Sends STREAM_BYTES of known content from host a to an echo server in host b
 * and back, and asserts that both ways arrive byte-exact. `around` runs right
 * before the client starts; the function it returns, right after it ends.
 */
async function echoExactly(
  a: Host,
  b: Host,
  addressB: string,
  around: () => Promise<() => Promise<void>> = () => Promise.resolve(() => Promise.resolve()),
): Promise<void> {
  const directory = await Deno.makeTempDir({ prefix: "vdeno-offload-" });
  try {
    const content = streamContent(STREAM_BYTES, 0x0ff1_0ad5);
    await Deno.writeFile(`${directory}/content`, content);
    const server = b.spawn(denoEval(ECHO_SERVER, [addressB, PORT, `${directory}/at-host2`]));
    await server.waitForOutput((text) => text.includes("listening"), 30_000);
    const after = await around();
    const client = await a.run(
      denoEval(ECHO_CLIENT, [addressB, PORT, `${directory}/content`, `${directory}/back`]),
      { timeoutMs: 180_000 },
    );
    assert.equal(client.code, 0, `the echo client failed: ${client.stderr}`);
    assert.equal((await server.exited()).code, 0, `the echo server failed: ${server.stderr}`);
    await after();
    const atHost2 = await Deno.readFile(`${directory}/at-host2`);
    assert.ok(
      atHost2.length === content.length && atHost2.every((byte, i) => byte === content[i]),
      `host 2 did not receive the stream exactly: ${firstDifference(content, atHost2)}`,
    );
    const back = await Deno.readFile(`${directory}/back`);
    assert.ok(
      back.length === content.length && back.every((byte, i) => byte === content[i]),
      `host 1 did not get the echo back exactly: ${firstDifference(content, back)}`,
    );
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

async function echoThroughTso(
  peer: Peer,
  group: string,
  overlay6: boolean,
  keyFile?: string,
): Promise<void> {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const vnl = `vxvde://${group}${keyFile ? `/key='${keyFile}'` : ""}`;
  const plugs = [startPlug(a, "vdeno", "tso-sender", vnl), startPlug(b, peer, "tso-peer", vnl)];
  const [addressA, addressB] = overlay6 ? ["fd77::1", "fd77::2"] : ["10.0.0.1", "10.0.0.2"];
  for (const [i, host] of [a, b].entries()) {
    await host.waitForLink("tap0", 30_000, plugs[i]);
    await host.configure("tap0", `${[addressA, addressB][i]}/${overlay6 ? 64 : 24}`);
  }
  assert.ok(await a.pingable(addressB), `host 1 cannot ping ${peer} in host 2`);

  type Counters = Record<string, number>;
  let tapBefore: Counters = {}, snmpA: Counters = {}, snmpB: Counters = {};
  let tapAfter: Counters = {}, snmpA2: Counters = {}, snmpB2: Counters = {};
  await echoExactly(a, b, addressB, async () => {
    [tapBefore, snmpA, snmpB] = [await tapCounters(a, "tso-sender"), await snmp(a), await snmp(b)];
    return async () => {
      [tapAfter, snmpA2, snmpB2] = [
        await tapCounters(a, "tso-sender"),
        await snmp(a),
        await snmp(b),
      ];
    };
  });
  const superFrames = tapAfter.superFramesIn - tapBefore.superFramesIn;
  assert.ok(superFrames > 0, `host 1's TAP handed over no super-frame: TSO was not used`);
  assert.equal(delta(snmpB, snmpB2, "Tcp.InCsumErrors"), 0, "bad TCP checksums in host 2");
  assert.equal(delta(snmpA, snmpA2, "Tcp.InCsumErrors"), 0, "bad TCP checksums in host 1");
  // vdeno cuts every TCP segment to fit one datagram, the first flight and retransmissions too.
  const fragmentsAtB = delta(snmpB, snmpB2, "Ip.ReasmReqds");
  assert.equal(fragmentsAtB, 0, "host 2 reassembled fragments: a segment did not fit a datagram");
  const fragmentsAtA = delta(snmpA, snmpA2, "Ip.ReasmReqds");
  if (peer === "vdeno") {
    assert.equal(fragmentsAtA, 0, "host 1 reassembled fragments of host 2's vdeno");
    const peerCounters = await tapCounters(b, "tso-peer");
    assert.ok(peerCounters.superFramesIn > 0, "host 2's TAP handed over no super-frame");
    assert.ok(peerCounters.superFramesOut > 0, "host 2's TAP got no merged segments (GRO)");
  }
  assert.ok(
    tapAfter.superFramesOut > tapBefore.superFramesOut,
    "host 1's TAP got no merged segments of the echo (GRO)",
  );
  console.log(
    `${peer}, ${overlay6 ? "IPv6" : "IPv4"} overlay: ${STREAM_BYTES} bytes each way, ` +
      `${superFrames} super-frames from host 1's TAP, ` +
      `TCP retransmissions ${delta(snmpA, snmpA2, "Tcp.RetransSegs")} from host 1, ` +
      `${delta(snmpB, snmpB2, "Tcp.RetransSegs")} from host 2, ` +
      `fragments reassembled: host 2 ${fragmentsAtB}, host 1 ${fragmentsAtA}`,
  );
}

hostTest(
  "a TCP stream cut by vdeno's TSO reaches another vdeno and back byte-exact, in whole datagrams",
  ["ping"],
  async () => {
    await echoThroughTso("vdeno", "239.7.0.1", false);
  },
);

hostTest(
  "a TCP/IPv6 stream cut by vdeno's TSO reaches another vdeno and back byte-exact, in whole datagrams",
  ["ping"],
  async () => {
    await echoThroughTso("vdeno", "239.7.0.2", true);
  },
);

hostTest(
  "on a keyed network, a TCP stream cut by vdeno's TSO reaches another vdeno and back byte-exact",
  ["ping"],
  async () => {
    // Sealing takes each frame whole in its slot: segments are not left in their super-frame.
    const keyFile = await Deno.makeTempFile({ prefix: "vdeno-offload-key-" });
    try {
      await Deno.writeTextFile(keyFile, newKeyText(), { mode: 0o600 });
      await echoThroughTso("vdeno", "239.7.0.5", false, keyFile);
    } finally {
      await Deno.remove(keyFile);
    }
  },
);

hostTest(
  "a TCP stream cut by vdeno's TSO reaches vde_plug and back byte-exact, in whole datagrams",
  ["vde_plug", "ping"],
  async () => {
    await echoThroughTso("vde_plug", "239.7.0.3", false);
  },
);

hostTest("a persistent TAP that vdeno used gives the next program, vde_plug, plain frames again", [
  "vde_plug",
  "ping",
], async () => {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const vnl = "vxvde://239.7.0.4";
  await a.sh(["ip", "tuntap", "add", "mode", "tap", "name", "tap0"]);
  const first = a.vdeno(["plug", "--name", "tso-first", "tap://tap0", vnl]);
  for (let tries = 0;; tries++) {
    try {
      await tapCounters(a, "tso-first"); // answering: the TAP is open, offloads on
      break;
    } catch (error) {
      if (tries === 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  await first.stop();
  // Had vdeno left TSO on, vde_plug would read 64 KB super-frames it cannot send.
  const plugs = [a.spawn(["vde_plug", "tap://tap0", vnl]), startPlug(b, "vdeno", "tso-peer", vnl)];
  for (const [i, host] of [a, b].entries()) {
    await host.waitForLink("tap0", 30_000, plugs[i]);
    await host.configure("tap0", `10.0.0.${i + 1}/24`);
  }
  assert.ok(await a.pingable("10.0.0.2"), "vde_plug on the TAP cannot ping host 2");
  await echoExactly(a, b, "10.0.0.2");
});
