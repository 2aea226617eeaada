/**
 * Hostile input in bulk: over 100k malformed datagrams at a running plug
 * while real traffic crosses it, random VNLs through every parser and
 * opener, and random or cut byte streams through the stream framing.
 */

import assert from "node:assert/strict";
import { MAX_STREAM_FRAME, StreamDecoder } from "../plugs/stream.ts";
import { type Host, hostTest, Lan, VDENO } from "./_harness.ts";

const JUNK_SENDER = new URL("./fixtures/junk_sender.ts", import.meta.url).pathname;
const VNL_FUZZER = new URL("./fixtures/vnl_fuzzer.ts", import.meta.url).pathname;

/** Resident memory (kB) and open descriptors of a process. */
function resources(pid: number): { rssKb: number; fds: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
  return { rssKb, fds: [...Deno.readDirSync(`/proc/${pid}/fd`)].length };
}

/** Every malformed kind junk_sender knows, plus frames that claim the MACs of real plugs. */
const JUNK_KINDS = [
  "random",
  "anylength",
  "short",
  "flags",
  "vni",
  "reserved",
  "tiny",
  "huge",
  "groupsource",
  "goodbye",
  "learn",
];
const MAC_A = "02:00:00:00:0a:0a";
const MAC_B = "02:00:00:00:0b:0b";

async function flood(attacker: Host, host: string, port: number, count: number) {
  const kinds = [...JUNK_KINDS, `spoof=${MAC_A}`, `spoof=${MAC_B}`];
  const output = await attacker.sh(
    [
      Deno.execPath(),
      "run",
      "-A",
      "--quiet",
      JUNK_SENDER,
      host,
      String(port),
      "42",
      String(count),
      ...kinds,
    ],
    300_000,
  );
  const sent: Record<string, number> = JSON.parse(output);
  return Object.values(sent).reduce((sum, n) => sum + n, 0);
}

hostTest(
  "over 100k malformed datagrams: the plug lives, memory stays bounded, pings go on, the MAC table stays within hashsize",
  ["ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, attacker] = lan.hosts;
    const vnl = "vxvde://239.9.0.1/vni=42/hashsize=64";
    const victim = a.vdeno(["plug", "--name", "fuzzed", "tap://tap0", vnl]);
    b.vdeno(["plug", "tap://tap0", vnl]);
    for (const [host, cidr, mac] of [[a, "10.0.0.1/24", MAC_A], [b, "10.0.0.2/24", MAC_B]]) {
      const h = host as Host;
      await h.waitForLink("tap0");
      await h.configure("tap0", cidr as string, mac as string);
    }
    assert.ok(await a.pingable("10.0.0.2"));
    const status = async () => JSON.parse(await a.sh([...VDENO, "status", "--json", "fuzzed"]));
    const before = (await status()).plugs[1];
    const pid = victim.child.pid;
    const startResources = resources(pid);

    const pinger = a.spawn(["ping", "-i", "0.1", "10.0.0.2"]);
    let sent = await flood(attacker, "239.9.0.1", 14789, 4000);
    sent += await flood(attacker, a.address, before.unicastPort, 4000);
    await pinger.stop("SIGINT");
    const endResources = resources(pid);
    const after = (await status()).plugs[1];
    const counted = (name: string) => after.counters[name] - before.counters[name];
    const summary = /(\d+) packets transmitted, (\d+) received/.exec(pinger.stdout);
    console.log(
      `sent ${sent} datagrams; pings ${
        summary?.[0]
      }; VmRSS ${startResources.rssKb} -> ${endResources.rssKb} kB; fds ${startResources.fds} -> ${endResources.fds}; counted: ${
        JSON.stringify(
          Object.fromEntries(
            Object.keys(after.counters).map((name) => [name, counted(name)]).filter(([, n]) =>
              n !== 0
            ),
          ),
        )
      }`,
    );

    assert.ok(sent >= 100_000, `at least 100k datagrams were sent (${sent})`);
    assert.equal((await a.run(["kill", "-0", String(pid)])).code, 0, "the plug is alive");
    assert.ok(summary && Number(summary[2]) > 0, `pings got through the flood: ${pinger.stdout}`);
    assert.ok(await a.pingable("10.0.0.2"), "and keep flowing after it");
    // A loose resource bound, not a timing: a leak of even 1 kB per datagram would pass 100 MB.
    assert.ok(
      endResources.rssKb - startResources.rssKb < 64 * 1024,
      `VmRSS grew from ${startResources.rssKb} to ${endResources.rssKb} kB`,
    );
    assert.ok(endResources.fds <= startResources.fds + 2, "no descriptors leaked");
    assert.equal(after.tableSize, 64);
    assert.ok(counted("learned") > 64, "the flood taught the table more MACs than it holds");
    assert.ok(counted("tableEvictions") > 0);
    assert.ok(
      after.learned.length <= after.tableSize,
      `${after.learned.length} entries in a table of ${after.tableSize}`,
    );
    const dropped = ["dropMalformed", "dropWrongHeader", "dropTooShort", "dropTooLong"]
      .map(counted).reduce((x, y) => x + y);
    assert.ok(dropped > 0 && counted("goodbyesReceived") > 0, "the junk reached the plug");
  },
);

hostTest(
  "random VNLs through every parser and opener: only VnlError or Error with a message",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    // An empty directory: random pcap:// and qemu:// names create files in it.
    const directory = await Deno.makeTempDir({ prefix: "vdeno-vnlfuzz-" });
    try {
      const seed = Date.now() % 100_000;
      const output = await host.sh(
        [
          "sh",
          "-c",
          `cd ${directory} && exec ${Deno.execPath()} run -A --quiet ${VNL_FUZZER} ${seed} 20000`,
        ],
        300_000,
      );
      const result = JSON.parse(output);
      assert.equal(result.tried, 20_000);
      assert.equal(result.escaped, 0, `seed ${seed}: ${JSON.stringify(result.escapes, null, 1)}`);
      assert.ok(result.opened > 0, "some random VNLs were good enough to open");
      assert.ok(result.refused > 0, "and many were refused");
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);

/**
 * The vde_plug stream encoding of `frames`, with zero-length records (which
 * are skipped) mixed in, and where each frame ends in it.
 */
function encode(frames: Uint8Array[], random: () => number) {
  const parts: Uint8Array[] = [];
  const ends: number[] = [];
  let length = 0;
  for (const frame of frames) {
    if (random() < 0.1) parts.push(new Uint8Array(2));
    parts.push(new Uint8Array([frame.length >> 8, frame.length & 0xff]), frame);
    length = parts.reduce((n, part) => n + part.length, 0);
    ends.push(length);
  }
  const stream = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    stream.set(part, at);
    at += part.length;
  }
  return { stream, ends };
}

function randomFrames(random: () => number): Uint8Array[] {
  const count = 1 + Math.floor(random() * 20);
  return Array.from({ length: count }, () => {
    const length = random() < 0.2
      ? MAX_STREAM_FRAME - Math.floor(random() * 3)
      : 1 + Math.floor(random() * 1600);
    return crypto.getRandomValues(new Uint8Array(length));
  });
}

/**
 * Feeds `stream` in random chunks, refusing deliveries at random (the
 * caller's queue full) and feeding again from where the decoder stopped.
 */
function decode(stream: Uint8Array, random: () => number) {
  const decoder = new StreamDecoder();
  const frames: Uint8Array[] = [];
  let errors = 0;
  for (let at = 0; at < stream.length;) {
    const end = Math.min(stream.length, at + 1 + Math.floor(random() * 3000));
    let position = at;
    while (position < end || decoder.ready) {
      const stopped = decoder.feed(stream, position, end, (frame) => {
        if (random() < 0.2) return false;
        assert.ok(frame.length >= 1 && frame.length <= MAX_STREAM_FRAME);
        frames.push(frame.slice());
        return true;
      }, () => errors++);
      assert.ok(stopped >= position && stopped <= end, "feed stops within its chunk");
      position = stopped;
    }
    at = end;
  }
  return { frames, errors };
}

Deno.test("stream framing: any split, refusal or cut of a valid stream yields exactly its whole frames, in order", () => {
  const random = Math.random;
  for (let round = 0; round < 300; round++) {
    const frames = randomFrames(random);
    const { stream, ends } = encode(frames, random);
    const whole = decode(stream, random);
    assert.equal(whole.errors, 0);
    assert.deepEqual(whole.frames, frames);
    // Cut anywhere: the frames wholly before the cut, nothing more, no error.
    const cut = Math.floor(random() * stream.length);
    const truncated = decode(stream.subarray(0, cut), random);
    assert.equal(truncated.errors, 0);
    assert.deepEqual(truncated.frames, frames.slice(0, truncated.frames.length));
    assert.equal(
      truncated.frames.length,
      ends.filter((end) => end <= cut).length,
      "every frame that ended before the cut was delivered",
    );
  }
});

Deno.test("stream framing: random bytes in random chunks never throw and yield only frames of legal length", () => {
  const data = new Uint8Array(1 << 16);
  let delivered = 0, errors = 0;
  for (let round = 0; round < 300; round++) {
    crypto.getRandomValues(data);
    // Small lengths make whole frames likely, so delivery is exercised too.
    if (round % 2) { for (let i = 0; i < data.length; i += 97) data[i] = 0; }
    const result = decode(data.subarray(0, Math.floor(Math.random() * data.length)), Math.random);
    delivered += result.frames.length;
    errors += result.errors;
  }
  assert.ok(delivered > 0 && errors > 0, `${delivered} frames, ${errors} framing errors`);
});

hostTest(
  "vdeno plug fed random bytes or a stream cut mid-frame on stdin ends cleanly at the end of input, its own echo dropped",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    // Multicast on the loopback, as on one machine with no network: the plug
    // hears its own datagrams, from 0.0.0.0, and must drop them as its echo.
    await host.sh(["ip", "route", "replace", "224.0.0.0/4", "dev", "lo"]);
    const plug = [...VDENO, "plug", "vxvde://239.9.0.2"].join(" ");
    for (
      const input of [
        "head -c 2000000 /dev/urandom",
        // A 60-byte frame, then a length of 1500 with only 10 bytes after it.
        String.raw`printf '\000\074%060d\005\3340123456789'`,
      ]
    ) {
      const result = await host.run(["sh", "-c", `${input} | ${plug}`], { timeoutMs: 60_000 });
      assert.equal(result.code, 0, `${input}: ${result.stderr}`);
      assert.doesNotMatch(result.stderr, /\n\s+at |error/i, "no stack trace, no error");
      assert.equal(result.stdout.length, 0, "its own frames did not come back to it");
    }
  },
);

// vxvde has no authentication: vdeplug4's receive path learns the source MAC of
// every datagram with the right header, and so does vdeno on an open network.
// Only a keyed network (key=) can tell a forgery from a peer.
for (const keyed of [false, true]) {
  const what = keyed
    ? "on a keyed network a frame claiming another plug's MAC is dropped and cannot redirect its traffic"
    : "on an open network a frame claiming another plug's MAC redirects it until that plug speaks again, as with vdeplug4";
  hostTest(what, ["ping"], async () => {
    await using lan = await Lan.create(3);
    const [a, b, attacker] = lan.hosts;
    const key = "5a".repeat(32);
    const vnl = `vxvde://239.9.0.4/vni=42${keyed ? "/key=env:LAN_KEY" : ""}`;
    for (
      const [host, name, cidr, mac] of [[a, "owner", "10.0.0.1/24", MAC_A], [
        b,
        "b",
        "10.0.0.2/24",
        MAC_B,
      ]] as const
    ) {
      host.vdeno(["plug", "--name", name, "tap://tap0", vnl], { env: { LAN_KEY: key } });
      await host.waitForLink("tap0");
      // No IPv6 chatter: only the pings below may teach the table where MAC_B is.
      await host.sh(["sysctl", "-qw", "net.ipv6.conf.tap0.disable_ipv6=1"]);
      await host.configure("tap0", cidr, mac);
    }
    assert.ok(await a.pingable("10.0.0.2"));
    const status = async () => JSON.parse(await a.sh([...VDENO, "status", "--json", "owner"]));
    const peerOfB = async () =>
      ((await status()).plugs[1].learned as { mac: string; peer: string }[])
        .find((entry) => entry.mac === MAC_B)?.peer ?? "none";
    const behindB = new RegExp(`^${b.address.replaceAll(".", "\\.")}:`);
    assert.match(await peerOfB(), behindB);
    const before = (await status()).plugs[1].counters;
    await attacker.sh([
      Deno.execPath(),
      "run",
      "-A",
      "--quiet",
      JUNK_SENDER,
      "239.9.0.4",
      "14789",
      "42",
      "1",
      `spoof=${MAC_B}`,
    ]);
    const after = (await status()).plugs[1].counters;
    if (keyed) {
      assert.equal(after.dropAuthFailed - before.dropAuthFailed, 1, "the forgery was dropped");
      assert.match(await peerOfB(), behindB, "MAC_B is still behind b");
    } else {
      assert.equal(after.framesIn - before.framesIn, 1, "the forgery was taken in");
      assert.match(await peerOfB(), new RegExp(`^${attacker.address.replaceAll(".", "\\.")}:`));
      // b speaks (one echo request to a): its frame wins MAC_B back.
      await b.run(["ping", "-c", "1", "-W", "1", "10.0.0.1"]);
      assert.match(await peerOfB(), behindB, "b's next frame wins MAC_B back");
      assert.ok(await a.pingable("10.0.0.2"));
    }
  });
}
