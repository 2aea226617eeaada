/**
 * agno:// against the real vdeplug_agno (Debian libvdeplug-agno): the wire
 * format facts, each checked on bytes that vde_plug produced or accepted,
 * with frames built or read here by WebCrypto (an implementation independent
 * of ours); then vde_plug and vdeno pinging each other through agno over
 * vxvde, and not with different keys.
 */

import assert from "node:assert/strict";
import { parseAgno, parseAgnoKey, readAgnoKey } from "../plugs/agno.ts";
import { type Host, hostTest, Lan, sleep, VDENO } from "./_harness.ts";

Deno.test("agno VNLs split as vdeplug4 splits them; bad ones say why", () => {
  assert.deepEqual(parseAgno("/etc/k[ethtype=ipv4]{vxvde://234.0.0.1/vni=3}"), {
    keyFile: "/etc/k",
    ethertype: 0x0800,
    inner: "vxvde://234.0.0.1/vni=3",
  });
  assert.deepEqual(parseAgno("{vxvde://}"), { keyFile: "", ethertype: 0xa6de, inner: "vxvde://" });
  assert.equal(parseAgno("~/k[e=copy]{tap://t}").ethertype, 0);
  assert.equal(parseAgno("[ethtype=ipv6]{tap://t}").ethertype, 0x86dd);
  assert.equal(parseAgno("[ethtype=rand]{tap://t}").ethertype, -1);
  assert.equal(parseAgno("[ethtype=0x88b5]{tap://t}").ethertype, 0x88b5);
  assert.equal(parseAgno("[ethtype=0]{tap://t}").ethertype, 0xa6de);
  assert.equal(parseAgno("'/a b/k'{tap://t}").keyFile, "/a b/k");
  assert.equal(parseAgno("/k{agno:///j{vxvde://}}").inner, "agno:///j{vxvde://}");
  assert.throws(() => parseAgno("/k"), /needs a nested VNL in braces/);
  assert.throws(() => parseAgno("[ethtype=0x100]{tap://t}"), /Bad ethtype/);
  assert.throws(() => parseAgno("[ethtype=0xffff]{tap://t}"), /Bad ethtype/);
  assert.throws(() => parseAgno("[ethtype=junk]{tap://t}"), /Bad ethtype/);
  assert.throws(() => parseAgno("[color=red]{tap://t}"), /Unknown key in agno:\/\/ VNL: color/);
});

Deno.test("agno key text: first 32 hex digits, others ignored, missing zero, 'A' reads as 1", () => {
  const hex = (key: Uint8Array | undefined) =>
    key && Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(
    hex(parseAgnoKey("00112233445566778899aabbccddeeff\n")),
    "00112233445566778899aabbccddeeff",
  );
  assert.equal(hex(parseAgnoKey("0011 2233-xyz 4455")), "00112233445500000000000000000000");
  assert.equal(hex(parseAgnoKey("BCDEF bcdef")), "bcdefbcdef000000000000000000000".padEnd(32, "0"));
  assert.equal(hex(parseAgnoKey("AAaa")), "11aa0000000000000000000000000000");
  assert.equal(hex(parseAgnoKey("123")), "12300000000000000000000000000000");
  assert.equal(parseAgnoKey("1"), undefined);
  const dir = Deno.makeTempDirSync();
  try {
    const path = writeKey(dir, "00112233445566778899aabbccddeeff\n");
    assert.equal(readAgnoKey(path)[15], 0xff);
    Deno.chmodSync(path, 0o644);
    assert.throws(() => readAgnoKey(path), /open to other users \(mode 0644\); run chmod 600/);
    Deno.writeTextFileSync(path, "x");
    Deno.chmodSync(path, 0o600);
    assert.throws(() => readAgnoKey(path), /expected 32 hex digits/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  assert.equal(parseAgnoKey("xyz? just g, h or 7"), undefined);
});

// ---- Frames built and read by WebCrypto, following /work/shared/vxvde-wire.md (agno) ----

async function cbcKey(key: Uint8Array<ArrayBuffer>) {
  return await crypto.subtle.importKey("raw", key, "AES-CBC", false, ["encrypt", "decrypt"]);
}

async function cbcEncrypt(
  key: CryptoKey,
  iv: Uint8Array<ArrayBuffer>,
  data: Uint8Array<ArrayBuffer>,
) {
  const out = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-CBC", iv }, key, data));
  return out.subarray(0, data.length); // WebCrypto adds a PKCS#7 block; agno pads with zeros itself
}

/** CBC decryption without padding: the last block is made to carry a valid PKCS#7 block after it. */
async function cbcDecrypt(
  key: CryptoKey,
  iv: Uint8Array<ArrayBuffer>,
  data: Uint8Array<ArrayBuffer>,
) {
  const last = data.length >= 16 ? data.slice(data.length - 16) : iv;
  const pad = await cbcEncrypt(key, last, new Uint8Array(16).fill(16));
  const whole = new Uint8Array(data.length + 16);
  whole.set(data);
  whole.set(pad, data.length);
  return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-CBC", iv }, key, whole));
}

interface AgnoHeader {
  ethertype: number;
  flags: number;
  unused: number;
  tag: string;
  time: number;
  random: Uint8Array;
}

/** Builds an agno frame from `frame` with a chosen header time. */
async function agnoEncrypt(key: CryptoKey, frame: Uint8Array, time: number, outer = 0xa6de) {
  const payload = frame.subarray(14);
  const padded = Math.ceil(payload.length / 16) * 16;
  const header = new Uint8Array(16);
  const view = new DataView(header.buffer);
  header.set(frame.subarray(12, 14), 0);
  header[2] = padded - payload.length;
  header.set(new TextEncoder().encode("agno"), 4);
  view.setUint32(8, time >>> 0);
  crypto.getRandomValues(header.subarray(12));
  const plain = new Uint8Array(padded);
  plain.set(payload);
  const out = new Uint8Array(30 + padded);
  out.set(frame.subarray(0, 12));
  out[12] = outer >> 8;
  out[13] = outer & 0xff;
  out.set(await cbcEncrypt(key, new Uint8Array(16), header), 14); // ECB of one block
  out.set(await cbcEncrypt(key, header, plain), 30);
  return out;
}

/** Reads an agno frame: its header and the frame it carries. */
async function agnoDecrypt(key: CryptoKey, wire: Uint8Array<ArrayBuffer>) {
  const headerBytes = await cbcDecrypt(key, new Uint8Array(16), wire.slice(14, 30));
  const view = new DataView(headerBytes.buffer);
  const header: AgnoHeader = {
    ethertype: view.getUint16(0),
    flags: headerBytes[2],
    unused: headerBytes[3],
    tag: new TextDecoder().decode(headerBytes.subarray(4, 8)),
    time: view.getUint32(8),
    random: headerBytes.slice(12, 16),
  };
  const plain = await cbcDecrypt(key, headerBytes, wire.slice(30));
  const frame = new Uint8Array(14 + plain.length - (header.flags & 0xf));
  frame.set(wire.subarray(0, 12));
  frame[12] = header.ethertype >> 8;
  frame[13] = header.ethertype & 0xff;
  frame.set(plain.subarray(0, frame.length - 14), 14);
  return { header, frame, outer: (wire[12] << 8) | wire[13] };
}

// ---- Stream ends: frames in and out of a plug as vde_plug's stdin/stdout stream ----

/** A plug in stream mode in a host, its stdout collected as bytes; killed with the LAN. */
class StreamEnd {
  readonly child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  #bytes = new Uint8Array(0);
  readonly #reading: Promise<void>;

  constructor(host: Host, plug: string[]) {
    const argv = host.wrap(plug);
    const child = this.child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#writer = this.child.stdin.getWriter();
    this.#reading = (async () => {
      for await (const chunk of child.stdout) {
        const joined = new Uint8Array(this.#bytes.length + chunk.length);
        joined.set(this.#bytes);
        joined.set(chunk, this.#bytes.length);
        this.#bytes = joined;
      }
    })();
  }

  async write(frame: Uint8Array): Promise<void> {
    const framed = new Uint8Array(frame.length + 2);
    framed[0] = frame.length >> 8;
    framed[1] = frame.length & 0xff;
    framed.set(frame, 2);
    await this.#writer.write(framed);
  }

  /** Frames read so far, longer than `minimum` bytes. */
  frames(minimum = 0): Uint8Array<ArrayBuffer>[] {
    const bytes = this.#bytes;
    const frames: Uint8Array<ArrayBuffer>[] = [];
    for (let at = 0; at + 2 <= bytes.length;) {
      const length = (bytes[at] << 8) | bytes[at + 1];
      if (at + 2 + length > bytes.length) break;
      if (length > minimum) frames.push(bytes.slice(at + 2, at + 2 + length));
      at += 2 + length;
    }
    return frames;
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* gone */ }
    await this.child.status;
    await this.#writer.close().catch(() => {});
    await this.#reading.catch(() => {});
  }
}

/** Waits until UDP ports are bound in `host`: the plugs on them are open. */
async function waitBound(host: Host, ports: number[]): Promise<void> {
  for (;;) {
    const listing = (await host.run(["ss", "-Hlun"])).stdout;
    if (ports.every((port) => new RegExp(`:${port}\\s`).test(listing))) return;
    await sleep(100);
  }
}

const REFERENCE = (vnl: string) => ["vde_plug", vnl];
const OURS = (vnl: string) => [...VDENO, "plug", vnl];

function testFrame(payloadLength: number, ethertype = 0x0800): Uint8Array<ArrayBuffer> {
  const frame = new Uint8Array(14 + payloadLength);
  frame.set([0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, ethertype >> 8, ethertype & 0xff]);
  for (let i = 14; i < frame.length; i++) frame[i] = (i * 7) & 0xff;
  return frame;
}

function writeKey(dir: string, text: string): string {
  const path = `${dir}/agno.key`;
  Deno.writeTextFileSync(path, text, { mode: 0o600 });
  Deno.chmodSync(path, 0o600);
  return path;
}

/**
 * Waits until `end` has at least `count` frames (longer than 1 byte: the
 * reference writes a 1-byte frame for each it rejects), or the time runs out
 * and the test then fails on what it has.
 */
async function waitFrames(end: StreamEnd, count: number, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (end.frames(1).length < count && Date.now() < deadline) await sleep(50);
  return end.frames(1);
}

for (const [name, encrypting] of [["vde_plug", REFERENCE], ["vdeno", OURS]] as const) {
  hostTest(`${name} encrypts agno frames as the wire format says (read back by WebCrypto)`, [
    "vde_plug",
    "od",
  ], async () => {
    const dir = Deno.makeTempDirSync();
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      // An uppercase A in the key file: the reference reads it as 1.
      const keyText = "A0112233 44556677 8899aabb ccddeeFF trailing digits ignored: 1234\n";
      const path = writeKey(dir, keyText);
      const key = await cbcKey(parseAgnoKey(keyText)!);
      assert.equal(parseAgnoKey(keyText)![0], 0x10);
      const cases = [["", 0xa6de], ["[ethtype=copy]", -1], ["[ethtype=ipv6]", 0x86dd], [
        "[ethtype=0x1234]",
        0x1234,
      ], ["[ethtype=rand]", -2]] as const;
      for (const [options, outer] of cases) {
        const raw = new StreamEnd(host, OURS("udp://6002->127.0.0.1:6001"));
        const agno = new StreamEnd(
          host,
          encrypting(`agno://${path}${options}{udp://6001->127.0.0.1:6002}`),
        );
        await waitBound(host, [6001, 6002]);
        const lengths = [0, 1, 15, 16, 17, 46, 1486];
        // time(2) reads a coarse clock, a few milliseconds behind: one second of slack below.
        const before = Math.floor(Date.now() / 1000);
        for (const length of lengths) await agno.write(testFrame(length, 0x0800 + length));
        const wires = await waitFrames(raw, lengths.length);
        const after = Math.floor(Date.now() / 1000);
        await raw.stop();
        await agno.stop();
        assert.equal(wires.length, lengths.length, `${options}: every frame crossed`);
        for (const [i, length] of lengths.entries()) {
          const wire = wires[i], sent = testFrame(length, 0x0800 + length);
          const padded = Math.ceil(length / 16) * 16;
          assert.equal(
            wire.length,
            30 + padded,
            `${options} ${length}: 12 + 2 + 16 + padded payload`,
          );
          assert.deepEqual(wire.subarray(0, 12), sent.subarray(0, 12), "the MACs are in clear");
          const { header, frame, outer: seen } = await agnoDecrypt(key, wire);
          assert.equal(header.tag, "agno");
          assert.equal(
            header.ethertype,
            0x0800 + length,
            "the original EtherType is in the header",
          );
          assert.equal(header.flags, padded - length, "flags hold the padding length");
          assert.equal(header.unused, 0);
          assert.ok(header.time >= before - 1 && header.time <= after, `time ${header.time}`);
          assert.deepEqual(frame, sent, `${options} ${length}: CBC with the plain header as IV`);
          if (outer === -1) assert.equal(seen, 0x0800 + length, "copy keeps the frame's own type");
          else if (outer === -2) assert.ok(seen >= 0x600 && seen <= 0xfffe, `rand: ${seen}`);
          else assert.equal(seen, outer);
          if (wire.length > 30 + 16) {
            assert.notDeepEqual(wire.subarray(30, 46), sent.subarray(14, 30), "payload encrypted");
          }
        }
        const salts = new Set(wires.map((wire) => wire.subarray(14, 30).join(",")));
        assert.equal(salts.size, wires.length, "4 random bytes make every header block differ");
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });

  hostTest(`${name} decrypts WebCrypto-built agno frames and keeps only those within -2..+1 s`, [
    "vde_plug",
    "od",
  ], async () => {
    const dir = Deno.makeTempDirSync();
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      const keyText = "00112233445566778899aabbccddeeff\n";
      const key = await cbcKey(parseAgnoKey(keyText)!);
      const path = writeKey(dir, keyText);
      let lengths: number[] = [];
      let first: Uint8Array | undefined;
      for (let attempt = 0; attempt < 3; attempt++) {
        const raw = new StreamEnd(host, OURS("udp://6002->127.0.0.1:6001"));
        const agno = new StreamEnd(host, encrypting(`agno://${path}{udp://6001->127.0.0.1:6002}`));
        await waitBound(host, [6001, 6002]);
        // Start just after a second begins, so that no tick falls between building and checking;
        // not at once: time(2) reads a coarse clock that can lag the tick by a few milliseconds.
        const inSecond = () => Date.now() % 1000;
        while (inSecond() < 30 || inSecond() > 150) await sleep(5);
        const now = Math.floor(Date.now() / 1000);
        const offsets = [-100, -3, -2, -1, 0, 1, 2, 3, 100];
        const wires = [];
        for (const [i, offset] of offsets.entries()) {
          wires.push(await agnoEncrypt(key, testFrame(20 + i), now + offset));
        }
        const wrongTag = await agnoEncrypt(key, testFrame(40), now);
        const otherKey = await agnoEncrypt(
          await cbcKey(crypto.getRandomValues(new Uint8Array(16))),
          testFrame(41),
          now,
        );
        for (const wire of [...wires, wrongTag.fill(0x55, 14, 30), otherKey]) await raw.write(wire);
        const marker = await agnoEncrypt(key, testFrame(99), Math.floor(Date.now() / 1000));
        await raw.write(marker);
        const received = await waitFrames(agno, 5);
        await raw.stop();
        await agno.stop();
        lengths = received.map((frame) => frame.length - 14);
        first = received[0];
        // A loaded machine can let a clock tick fall between our clock and the plug's:
        // only a window shifted by exactly that one second is worth another try.
        const shifted = lengths.join() === "21,22,23,24,99" || lengths.join() === "23,24,25,26,99";
        if (!shifted) break;
      }
      assert.deepEqual(
        lengths,
        [22, 23, 24, 25, 99],
        "sender time 2 s behind to 1 s ahead passes; no other, no wrong tag, no other key",
      );
      assert.deepEqual(first, testFrame(22), "decrypted to the very frame");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

async function agnoPing(keyA: string, keyB: string, options = ""): Promise<boolean> {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  a.spawn(["vde_plug", "tap://tap0", `agno://${keyA}${options}{vxvde://239.7.0.1}`]);
  b.vdeno(["plug", "tap://tap0", `agno://${keyB}${options}{vxvde://239.7.0.1}`]);
  for (const [i, host] of [a, b].entries()) {
    await host.waitForLink("tap0");
    await host.configure("tap0", `10.0.0.${i + 1}/24`);
  }
  const there = await a.pingable("10.0.0.2", keyA === keyB ? 10_000 : 4000);
  const back = await b.pingable("10.0.0.1", keyA === keyB ? 10_000 : 4000);
  return there && back;
}

hostTest(
  "vde_plug agno://KEY{vxvde://...} and vdeno plug agno://KEY{vxvde://...} ping each other, not with different keys",
  ["vde_plug", "ping"],
  async () => {
    const dir = Deno.makeTempDirSync();
    try {
      const one = `${dir}/one`, other = `${dir}/other`;
      Deno.writeTextFileSync(one, "0123456789abcdef0123456789abcdef\n", { mode: 0o600 });
      Deno.writeTextFileSync(other, "fedcba9876543210fedcba9876543210\n", { mode: 0o600 });
      assert.ok(await agnoPing(one, one), "same key: pings both ways");
      assert.ok(await agnoPing(one, one, "[ethtype=rand]"), "same key, random outer types");
      assert.equal(await agnoPing(one, other), false, "different keys: no ping");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);
