/**
 * Keyed vxvde networks (`key=`): the replay window and the sealer on their
 * own, key files, and real plugs on namespace hosts: keyed plugs talk, plugs
 * without the key (vdeno or vde_plug) and with another key get nothing
 * through either way, replays are dropped and counted, and the wire carries
 * no plaintext.
 */

import assert from "node:assert/strict";
import { FrameBatch, HEADROOM } from "../core/frames.ts";
import {
  FRESH_SECONDS,
  loadKey,
  newKeyText,
  readKeyFile,
  ReplayWindow,
  SEALED_PREFIX,
  sealedHeader,
  Sealer,
  Verdict,
  WINDOW_SIZE,
} from "../plugs/seal.ts";
import { MISMATCH_WARNING_SECONDS } from "../plugs/vxvde.ts";
import { type Host, hostTest, Lan, run, VDENO } from "./_harness.ts";

const REPLAY = new URL("./fixtures/udp_replay.ts", import.meta.url).pathname;

Deno.test("replay window: new, duplicate, reordered within the window, too old, new epoch", () => {
  const window = new ReplayWindow();
  const see = (high: number, low: number) => {
    if (!window.fresh(high, low)) return false;
    window.accept(high, low, 0);
    return true;
  };
  assert.equal(see(7, 100), true);
  assert.equal(see(7, 100), false, "a duplicate");
  assert.equal(see(7, 102), true);
  assert.equal(see(7, 101), true, "late but inside the window");
  assert.equal(see(7, 101), false);
  assert.equal(see(7, 100 + WINDOW_SIZE + 50), true, "a jump ahead");
  assert.equal(see(7, 102), false, "now below the window");
  assert.equal(see(7, 100 + 60), true, "still inside the window after the jump, never seen");
  assert.equal(see(7, 100 + WINDOW_SIZE + 49), true);
  assert.equal(see(7, 100 + WINDOW_SIZE + 10_000), true, "a jump beyond the whole ring");
  assert.equal(see(7, 100 + WINDOW_SIZE + 50), false, "forgotten by the jump: too old");
  assert.equal(see(6, 5_000_000), false, "an older epoch");
  assert.equal(see(8, 0), true, "a newer epoch");
  assert.equal(see(8, 0), false);
  for (let low = 1; low < 3000; low++) assert.equal(see(8, low), true, `in order ${low}`);
  for (let low = 0; low < 3000; low++) assert.equal(window.fresh(8, low), false, `seen ${low}`);
});

const SECRET = new Uint8Array(32).fill(7);

/** Seals `frame` with `sealer` and returns the datagram bytes (header to end). */
function sealFrame(sealer: Sealer, vni: number, frame: Uint8Array, now: number): Uint8Array {
  const batch = new FrameBatch(1);
  batch.push(frame);
  batch.bytes.set(sealedHeader(vni), HEADROOM - SEALED_PREFIX);
  assert.ok(sealer.seal(batch, 0, frame.length, now));
  return batch.bytes.slice(HEADROOM - SEALED_PREFIX, HEADROOM + frame.length);
}

/** Opens a datagram with `sealer`; returns the verdict and the frame. */
function openDatagram(sealer: Sealer, datagram: Uint8Array, now: number) {
  const batch = new FrameBatch(1);
  batch.bytes.set(datagram, HEADROOM - SEALED_PREFIX);
  const length = datagram.length - SEALED_PREFIX;
  const verdict = sealer.open(batch, 0, length, now);
  return { verdict, frame: batch.bytes.slice(HEADROOM, HEADROOM + length) };
}

Deno.test("sealer: round trip, no plaintext, replays, tampering, other keys and VNIs, stale senders", () => {
  const now = Date.now() / 1000;
  const alice = new Sealer(SECRET, 42), bob = new Sealer(SECRET, 42);
  const frame = new Uint8Array(100).map((_, i) => i);
  const first = sealFrame(alice, 42, frame, now);
  const second = sealFrame(alice, 42, frame, now);
  assert.equal(first.length, frame.length + SEALED_PREFIX);
  assert.deepEqual([...first.subarray(0, 8)], [8, 0, 0, 0x5e, 0, 0, 42, 0]);
  assert.notDeepEqual(first.subarray(SEALED_PREFIX), frame, "the frame is encrypted");
  assert.notDeepEqual(first.subarray(SEALED_PREFIX), second.subarray(SEALED_PREFIX), "new nonce");
  assert.notDeepEqual(first.subarray(16, 24), second.subarray(16, 24), "the sequence moved");
  assert.deepEqual(first.subarray(12, 16), second.subarray(12, 16), "one sender id");

  const opened = openDatagram(bob, first, now);
  assert.equal(opened.verdict, Verdict.ok);
  assert.deepEqual(opened.frame, frame);
  assert.equal(openDatagram(bob, first, now).verdict, Verdict.replayed, "the same datagram again");
  assert.equal(openDatagram(bob, second, now).verdict, Verdict.ok);

  for (const at of [3, 9, 14, 20, 30, SEALED_PREFIX + 5]) {
    const tampered = sealFrame(alice, 42, frame, now);
    tampered[at] ^= 0x01;
    const verdict = openDatagram(bob, tampered, now).verdict;
    assert.notEqual(verdict, Verdict.ok, `a flipped bit at byte ${at} is caught`);
  }
  const otherKey = new Sealer(new Uint8Array(32).fill(8), 42);
  assert.equal(
    openDatagram(otherKey, sealFrame(alice, 42, frame, now), now).verdict,
    Verdict.forged,
  );
  const otherVni = new Sealer(SECRET, 43);
  assert.equal(
    openDatagram(otherVni, sealFrame(alice, 42, frame, now), now).verdict,
    Verdict.forged,
  );

  const carol = new Sealer(SECRET, 42);
  const old = sealFrame(carol, 42, frame, now - FRESH_SECONDS - 5);
  assert.equal(openDatagram(bob, old, now).verdict, Verdict.replayed, "a stale first datagram");
  const goodbye = sealFrame(carol, 42, new Uint8Array(0), now);
  assert.equal(goodbye.length, SEALED_PREFIX);
  assert.equal(openDatagram(bob, goodbye, now).verdict, Verdict.ok, "an empty sealed goodbye");
  assert.equal(openDatagram(bob, goodbye, now).verdict, Verdict.replayed, "a replayed goodbye");
  for (const sealer of [alice, bob, otherKey, otherVni, carol]) sealer.close();
});

Deno.test("key files: keygen writes 0600, a file open to others is refused, env:NAME works", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/lan.key`;
    const made = await run([...VDENO, "keygen", path]);
    assert.equal(made.code, 0, made.stderr);
    assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
    assert.match(Deno.readTextFileSync(path), /^[0-9a-f]{64}\n$/);
    assert.equal(readKeyFile(path).length, 32);
    const again = await run([...VDENO, "keygen", path]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /exists; use --force/);
    assert.notEqual(newKeyText(), newKeyText());

    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      Deno.chmodSync(path, mode);
      assert.throws(() => readKeyFile(path), /open to other users .*chmod 600/);
      const plug = await run([...VDENO, "plug", `vxvde://239.9.9.9/key='${path}'`], {
        timeoutMs: 20_000,
      });
      assert.equal(plug.code, 1);
      const lines = plug.stderr.trim().split("\n");
      assert.equal(lines.length, 1, plug.stderr);
      assert.match(lines[0], /is open to other users \(mode 06\d\d\); run chmod 600/);
    }
    const unquoted = await run([...VDENO, "plug", `vxvde://239.9.9.9/key=${path}`]);
    assert.equal(unquoted.code, 1);
    assert.match(
      unquoted.stderr.trim(),
      /^vdeno plug: Bad key: .* quote it: key='\/etc\/vdeno\/lan.key'$/,
    );
    Deno.writeTextFileSync(path, "not a key\n", { mode: 0o600 });
    Deno.chmodSync(path, 0o600);
    assert.throws(() => readKeyFile(path), /expected 64 hex digits/);
    Deno.env.set("VDENO_TEST_KEY", "ab".repeat(32));
    assert.deepEqual(loadKey("env:VDENO_TEST_KEY"), new Uint8Array(32).fill(0xab));
    assert.throws(() => loadKey("env:VDENO_NO_SUCH_KEY"), /VDENO_NO_SUCH_KEY is not set/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

interface PlugStatus {
  counters: Record<string, number>;
  learned: { mac: string }[];
}

async function vxStatus(host: Host, name: string): Promise<PlugStatus> {
  return JSON.parse(await host.sh([...VDENO, "status", "--json", name])).plugs[1];
}

/** Starts `vdeno plug tap://tap0 VNL` named `name` on `host`, with 10.0.0.N and a fixed MAC. */
async function startPlug(host: Host, name: string, vnl: string, n: number, env = {}) {
  const plug = host.vdeno(["plug", "--name", name, "tap://tap0", vnl], { env });
  await host.waitForLink("tap0", undefined, plug);
  await host.configure("tap0", `10.0.0.${n}/24`, `02:00:00:00:00:0${n}`);
  return plug;
}

function makeKeys(count: number): { dir: string; paths: string[] } {
  const dir = Deno.makeTempDirSync();
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const path = `${dir}/k${i}`;
    Deno.writeTextFileSync(path, newKeyText(), { mode: 0o600 });
    paths.push(path);
  }
  return { dir, paths };
}

hostTest(
  "keyed plugs ping; a plug without the key or with another key gets no frame through either way",
  ["ping"],
  async () => {
    const { dir, paths: [key, otherKey] } = makeKeys(2);
    try {
      await using lan = await Lan.create(4);
      const [a, b, open, wrong] = lan.hosts;
      const group = "vxvde://239.6.0.1/vni=77";
      await startPlug(a, "sa", `${group}/key='${key}'`, 1);
      // The same key through the environment.
      const hex = Deno.readTextFileSync(key).trim();
      await startPlug(b, "sb", `${group}/key=env:LAN_KEY`, 2, { LAN_KEY: hex });
      await startPlug(open, "so", group, 3);
      await startPlug(wrong, "sw", `${group}/key='${otherKey}'`, 4);
      assert.ok(await a.pingable("10.0.0.2"), "keyed A pings keyed B");
      assert.ok(await b.pingable("10.0.0.1"), "keyed B pings keyed A");
      for (const [outsider, address] of [[open, "10.0.0.3"], [wrong, "10.0.0.4"]] as const) {
        for (const target of ["10.0.0.1", "10.0.0.2"]) {
          const out = await outsider.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", target]);
          assert.notEqual(out.code, 0, `${outsider.netns} reached ${target}`);
        }
        const into = await a.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", address]);
        assert.notEqual(into.code, 0, `A reached ${address}`);
      }
      const [sa, sb, so, sw] = await Promise.all([
        vxStatus(a, "sa"),
        vxStatus(b, "sb"),
        vxStatus(open, "so"),
        vxStatus(wrong, "sw"),
      ]);
      const macs = (status: PlugStatus) => status.learned.map((entry) => entry.mac).sort();
      assert.deepEqual(macs(sa), ["02:00:00:00:00:02"], "A learned only B");
      assert.deepEqual(macs(sb), ["02:00:00:00:00:01"], "B learned only A");
      assert.deepEqual(macs(so), [], "the open plug learned nobody");
      assert.deepEqual(macs(sw), [], "the wrong-key plug learned nobody");
      assert.equal(so.counters.framesIn, 0, "nothing reached the open plug");
      assert.equal(sw.counters.framesIn, 0, "nothing reached the wrong-key plug");
      assert.ok(so.counters.dropWrongHeader > 0, "the open plug dropped sealed datagrams");
      assert.ok(sw.counters.dropAuthFailed > 0, "the wrong-key plug failed to open them");
      assert.ok(sa.counters.dropAuthFailed > 0, "A dropped and counted what outsiders sent");
      assert.ok(sb.counters.dropAuthFailed > 0, "B dropped and counted what outsiders sent");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "replayed sealed datagrams, to the group and to a plug's own port, are dropped and counted",
  ["ping"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      const [a, b, attacker] = lan.hosts;
      const group = `vxvde://239.6.0.2/key='${key}'`;
      await startPlug(a, "ra", group, 1);
      await startPlug(b, "rb", group, 2);
      assert.ok(await a.pingable("10.0.0.2"));
      const unicastPort = JSON.parse(await a.sh([...VDENO, "status", "--json", "ra"])).plugs[1]
        .unicastPort;
      const recorder = attacker.spawn([
        Deno.execPath(),
        "run",
        "-A",
        "--quiet",
        REPLAY,
        "239.6.0.2",
        "14789",
        "6",
        `${a.address}:${unicastPort}`,
      ]);
      await recorder.waitForOutput((text) => text.includes("listening"));
      const before = await vxStatus(a, "ra");
      // Broadcast pings travel to the group, where the attacker records them.
      await b.run(["ping", "-b", "-c", "8", "-i", "0.2", "10.0.0.255"]);
      assert.equal((await recorder.exited()).code, 0, recorder.stderr);
      const report = JSON.parse(recorder.stdout);
      assert.equal(report.recorded, 6);
      assert.equal(report.sent, 12);
      await a.run(["ping", "-c", "1", "10.0.0.2"]); // a frame after the replays, as a barrier
      const after = await vxStatus(a, "ra");
      assert.equal(
        after.counters.dropReplay - before.counters.dropReplay,
        12,
        "each replay, to the group and to the unicast port, is counted once",
      );
      assert.equal(after.counters.dropAuthFailed - before.counters.dropAuthFailed, 0);
      assert.ok(await a.pingable("10.0.0.2"), "the network still works");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

const PATTERN = "7661646e6f2d706c61696e2d74657874"; // "vadno-plain-text", the ping payload

/** Pings A -> B with PATTERN as payload while tcpdump on B's underlay prints every UDP datagram in hex. */
async function pingCaptureHex(vnl: string): Promise<string[]> {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  await startPlug(a, "ca", vnl, 1);
  await startPlug(b, "cb", vnl, 2);
  assert.ok(await a.pingable("10.0.0.2"));
  const tcpdump = b.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", "-x", "udp"]);
  await tcpdump.waitForOutput((text) => text.includes("listening on"));
  const ping = await a.run(["ping", "-c", "5", "-i", "0.2", "-p", PATTERN, "10.0.0.2"]);
  assert.equal(ping.code, 0, ping.stdout);
  await a.run(["ping", "-b", "-c", "2", "-i", "0.2", "-p", PATTERN, "10.0.0.255"]);
  await tcpdump.stop("SIGINT");
  const packets: string[] = [];
  for (const line of tcpdump.stdout.split("\n")) {
    const hex = /^\s+0x[0-9a-f]+:\s+(.*)$/.exec(line);
    if (hex) packets[packets.length - 1] += hex[1].replace(/\s+/g, "");
    else if (line.includes(" UDP")) packets.push("");
  }
  return packets;
}

hostTest(
  "a tcpdump capture of a keyed ping carries no plaintext of the frames (an open one does)",
  ["ping", "tcpdump"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      const open = await pingCaptureHex("vxvde://239.6.0.3");
      assert.ok(open.length >= 10, `captured ${open.length} datagrams`);
      assert.ok(open.some((hex) => hex.includes(PATTERN)), "the control: an open network shows it");
      const sealed = await pingCaptureHex(`vxvde://239.6.0.3/key='${key}'`);
      assert.ok(sealed.length >= 10, `captured ${sealed.length} datagrams`);
      const carrying = sealed.filter((hex) => hex.includes(PATTERN.slice(0, 16)));
      assert.equal(carrying.length, 0, "no sealed datagram shows the ping payload");
      // IP (20) + UDP (8) + sealed header: byte 3 of the vxvde header is the sealed mark.
      assert.ok(sealed.every((hex) => hex.slice(56, 72).startsWith("0800005e")), sealed[0]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "a vde_plug on the same group and VNI neither receives frames from a keyed network nor gets frames into it",
  ["ping", "vde_plug"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      const [a, b, c] = lan.hosts;
      const group = "vxvde://239.6.0.4";
      await startPlug(a, "va", `${group}/key='${key}'`, 1);
      await startPlug(b, "vb", `${group}/key='${key}'`, 2);
      c.spawn(["vde_plug", "tap://tap0", group]);
      await c.waitForLink("tap0");
      await c.configure("tap0", "10.0.0.3/24", "02:00:00:00:00:03");
      assert.ok(await a.pingable("10.0.0.2"), "the keyed plugs talk");
      const before = await vxStatus(a, "va");
      const out = await c.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.1"]);
      assert.notEqual(out.code, 0, "vde_plug's host reached A");
      const into = await a.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.3"]);
      assert.notEqual(into.code, 0, "A reached vde_plug's host");
      await b.run(["ping", "-b", "-c", "3", "-i", "0.2", "10.0.0.255"]);
      const stats = JSON.parse(await c.sh(["ip", "-s", "-j", "link", "show", "tap0"]))[0].stats64;
      assert.equal(stats.rx.packets, 0, "vde_plug wrote no frame of the keyed network to its TAP");
      const after = await vxStatus(a, "va");
      assert.ok(
        after.counters.dropAuthFailed > before.counters.dropAuthFailed,
        "vde_plug's plaintext frames were dropped and counted",
      );
      assert.deepEqual(after.learned.map((entry) => entry.mac), ["02:00:00:00:00:02"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "goodbyes are sealed: a keyed plug forgets a peer that leaves, never on a forged or plaintext goodbye",
  ["ping"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      const [a, b, attacker] = lan.hosts;
      const group = `vxvde://239.6.0.5/key='${key}'`;
      await startPlug(a, "ga", group, 1);
      await startPlug(b, "gb", group, 2);
      assert.ok(await a.pingable("10.0.0.2"));
      const before = await vxStatus(a, "ga");
      assert.deepEqual(before.learned.map((entry) => entry.mac), ["02:00:00:00:00:02"]);
      const unicastPort = JSON.parse(await a.sh([...VDENO, "status", "--json", "ga"])).plugs[1]
        .unicastPort;
      // Five bare plaintext headers of VNI 1, and five sealed-looking goodbyes with a made-up seal.
      const net = new URL("../ffi/net.ts", import.meta.url).pathname;
      const seal = new URL("../plugs/seal.ts", import.meta.url).pathname;
      const vxvde = new URL("../plugs/vxvde.ts", import.meta.url).pathname;
      const script = `
      import { sendTo, SocketAddress, udpSocket } from "${net}";
      import { SEALED_PREFIX, sealedHeader } from "${seal}";
      import { vxvdeHeader } from "${vxvde}";
      const fd = udpSocket(2);
      for (const to of [SocketAddress.parse("239.6.0.5", 14789), SocketAddress.parse("${a.address}", ${unicastPort})]) {
        for (let i = 0; i < 5; i++) {
          sendTo(fd, vxvdeHeader(1), 8, to);
          const forged = crypto.getRandomValues(new Uint8Array(SEALED_PREFIX));
          forged.set(sealedHeader(1));
          new DataView(forged.buffer).setUint32(8, Math.floor(Date.now() / 1000));
          sendTo(fd, forged, SEALED_PREFIX, to);
        }
      }`;
      await attacker.sh([Deno.execPath(), "eval", script]);
      await a.run(["ping", "-c", "1", "10.0.0.2"]); // a frame after the forgeries, as a barrier
      const forgedAfter = await vxStatus(a, "ga");
      assert.equal(forgedAfter.counters.goodbyesReceived, before.counters.goodbyesReceived);
      assert.equal(forgedAfter.counters.dropAuthFailed - before.counters.dropAuthFailed, 20);
      assert.deepEqual(forgedAfter.learned.map((entry) => entry.mac), ["02:00:00:00:00:02"]);

      await b.processes[0].stop("SIGTERM");
      let left = forgedAfter;
      for (
        let tries = 0;
        tries < 50 && left.counters.goodbyesReceived === before.counters.goodbyesReceived;
        tries++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        left = await vxStatus(a, "ga");
      }
      assert.equal(
        left.counters.goodbyesReceived - before.counters.goodbyesReceived,
        1,
        "B's goodbye",
      );
      assert.deepEqual(left.learned, [], "A forgot B");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "key material: a = COMMAND child (also of a daemon) and a vdeno ns command see neither the key nor vdeno's own variables",
  ["unshare"],
  async () => {
    const dir = Deno.makeTempDirSync();
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      const hex = newKeyText().trim();
      const env = { LAN_KEY: hex, OTHER_VARIABLE: "kept" };
      const vnl = "vxvde://239.6.0.6/key=env:LAN_KEY";
      const dump = (name: string) => ["sh", "-c", `env > ${dir}/${name}`];
      const plain = host.vdeno(["plug", vnl, "=", ...dump("plug")], { env });
      assert.equal((await plain.exited()).code, 0, plain.stderr);
      const daemon = host.vdeno(["plug", "-d", vnl, "=", ...dump("daemon")], { env });
      assert.equal((await daemon.exited()).code, 0, daemon.stderr);
      const ns = host.vdeno(["ns", vnl, ...dump("ns")], { env });
      assert.equal((await ns.exited()).code, 0, ns.stderr);
      for (const name of ["plug", "daemon", "ns"]) {
        let seen = "";
        for (let tries = 0; tries < 100 && !seen.includes("OTHER_VARIABLE"); tries++) {
          await new Promise((resolve) => setTimeout(resolve, 50));
          try {
            seen = Deno.readTextFileSync(`${dir}/${name}`);
          } catch { /* not written yet */ }
        }
        assert.match(seen, /^OTHER_VARIABLE=kept$/m, `${name}: the child's environment`);
        assert.ok(!seen.includes(hex), `${name}: the child saw the key`);
        assert.doesNotMatch(seen, /^LAN_KEY=/m, name);
        assert.doesNotMatch(seen, /^VDENO_DAEMON_CHILD=/m, name);
        assert.doesNotMatch(seen, /invocation-count-for-turbofan/, `${name}: vdeno's V8 flags`);
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

Deno.test("key files: one planted by another user (mode 0600, owner nobody) is refused, even by root, in one line", async (t) => {
  if (Deno.uid() !== 0) {
    if (Deno.env.get("CI") === "true") throw new Error(`${t.name}: needs root in CI`);
    console.error(`\n!!! SKIPPED ${t.name}: needs root (chown)\n`);
    return;
  }
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/planted.key`;
    Deno.writeTextFileSync(path, newKeyText(), { mode: 0o600 });
    Deno.chmodSync(path, 0o600);
    Deno.chownSync(path, 65534, 65534);
    assert.throws(() => readKeyFile(path), /belongs to user 65534, not to you \(0\) or root/);
    const plug = await run([...VDENO, "plug", `vxvde://239.9.9.9/key='${path}'`], {
      timeoutMs: 20_000,
    });
    assert.equal(plug.code, 1);
    const lines = plug.stderr.trim().split("\n");
    assert.equal(lines.length, 1, plug.stderr);
    assert.match(
      lines[0],
      /^vdeno plug: Key file .* belongs to user 65534, not to you \(0\) or root/,
    );
    Deno.chownSync(path, 0, 0);
    assert.equal(readKeyFile(path).length, 32, "the same file, owned by root, is accepted");
    assert.throws(() => readKeyFile(dir), /Is a directory|is not a regular file/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

hostTest(
  "a key mismatch is warned about once per 10 seconds, not per datagram: open, keyed and wrong-key plugs on one group",
  ["ping"],
  async () => {
    const { dir, paths: [key, otherKey] } = makeKeys(2);
    try {
      await using lan = await Lan.create(3);
      const [keyed, open, wrong] = lan.hosts;
      const group = "vxvde://239.6.0.7/vni=78";
      const started = Date.now();
      const plugs = [
        await startPlug(keyed, "mk", `${group}/key='${key}'`, 1),
        await startPlug(open, "mo", group, 2),
        await startPlug(wrong, "mw", `${group}/key='${otherKey}'`, 3),
      ];
      // 150 broadcasts each from the keyed and the open host, all to the group.
      await Promise.all(
        [keyed, open].map((host) =>
          host.run(["ping", "-b", "-c", "150", "-i", "0.01", "-W", "1", "10.0.0.255"])
        ),
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      const elapsed = (Date.now() - started) / 1000;
      const [mk, mo, mw] = await Promise.all([
        vxStatus(keyed, "mk"),
        vxStatus(open, "mo"),
        vxStatus(wrong, "mw"),
      ]);
      const most = 1 + Math.floor(elapsed / MISMATCH_WARNING_SECONDS);
      const expectations = [
        [plugs[0], /a plug without a key is on this group/, mk.counters.dropAuthFailed],
        [
          plugs[1],
          /a keyed plug is on this group and VNI; give this plug its key=/,
          mo.counters.dropWrongHeader,
        ],
        [plugs[2], /fail authentication: a plug with another key/, mw.counters.dropAuthFailed],
      ] as const;
      for (const [plug, pattern, dropped] of expectations) {
        const lines = plug.stderr.split("\n").filter((line) => pattern.test(line));
        assert.ok(dropped >= 150, `${pattern}: ${dropped} dropped`);
        assert.ok(
          lines.length >= 1 && lines.length <= most,
          `${pattern}: ${lines.length} warnings for ${dropped} drops in ${elapsed} s:\n${plug.stderr}`,
        );
        assert.match(
          lines[0],
          / vdeno warn: vxvde:\/\/239\.6\.0\.7\/vni=78.*: .* from 10(\.\d+){3}:\d+/,
        );
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);
