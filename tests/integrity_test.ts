/**
 * End-to-end integrity through the zero-copy paths: two hosts, each with
 * `vdeno plug tap://tap0` on an overlay, four TCP connections (two over
 * IPv4, two over IPv6) each carrying tens of MB of known pseudo-random
 * content both ways at once, while ping floods and a UDP stream of varied
 * sizes run meanwhile. Every receiver checks every byte. The sending TAPs cut
 * super-frames into split frames (payloads left in the super-frame) and the
 * receiving plugs hand UDP_GRO runs to their TAPs as held frames (payloads
 * left where they arrived): a frame that still points into a buffer written
 * again, a backlog carried across the other plug's turn, a run cut across
 * batches, all read as wrong bytes here, or as bad checksums in the
 * kernels (a payload written over after its segment's checksum was made).
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, type Process, VDENO } from "./_harness.ts";
import { newKeyText } from "../plugs/seal.ts";

const PEER = new URL("./fixtures/integrity_peer.ts", import.meta.url).pathname;
const PORT = 5301;
/** Bytes each way on each connection. */
const STREAM_BYTES = 24 * 1024 * 1024;

interface StreamResult {
  seed: number;
  checked: number;
  firstWrong: number;
}

async function plugCounters(host: Host, name: string): Promise<Record<string, number>[]> {
  const report = JSON.parse(await host.sh([...VDENO, "status", "--json", name]));
  return report.plugs.map((plug: { counters: Record<string, number> }) => plug.counters);
}

/**
 * The kernel's counts of packets dropped for a bad checksum in `host`, by name (a payload
 * overwritten after its segment's checksum was made is caught there, not by the receivers),
 * and of TCP retransmissions.
 */
async function kernelCounts(host: Host): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  const lines = (await host.sh(["cat", "/proc/net/snmp"])).trim().split("\n");
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const names = lines[i].split(/\s+/), values = lines[i + 1].split(/\s+/);
    names.forEach((name, k) => {
      if (name === "InCsumErrors" || name === "RetransSegs") {
        counts[`${names[0]}${name}`] = Number(values[k]);
      }
    });
  }
  for (const line of (await host.sh(["cat", "/proc/net/snmp6"])).trim().split("\n")) {
    const [name, value] = line.split(/\s+/);
    if (name.endsWith("InCsumErrors")) counts[name] = Number(value);
  }
  return counts;
}

/** Asserts that a ping flood's output reports no reply with wrong content. */
function noWrongReplies(ping: Process, what: string): void {
  const said = ping.stdout + ping.stderr;
  assert.ok(!/wrong data|DUP!/i.test(said), `${what}: ${said.slice(-2000)}`);
  assert.match(said, /(\d+) received/, `${what} printed no summary: ${said.slice(-500)}`);
}

/**
 * Runs the streams, pings and UDP between plugs opened with `vnl` in two hosts, and asserts that
 * every byte arrived as sent and that the zero-copy paths were taken. With `underlayMtu`, the
 * hosts' underlay has that MTU: segments are cut smaller, more of them than a batch holds.
 */
async function everyByteArrives(vnl: string, underlayMtu?: number): Promise<void> {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  if (underlayMtu) {
    for (const host of [a, b]) {
      await host.sh(["ip", "link", "set", "eth0", "mtu", `${underlayMtu}`]);
    }
  }
  const names = [`integrity-a-${Deno.pid}`, `integrity-b-${Deno.pid}`];
  const plugs = [a, b].map((host, i) =>
    host.vdeno(["plug", "--name", names[i], "tap://tap0", vnl])
  );
  for (const [i, host] of [a, b].entries()) {
    await host.waitForLink("tap0", 30_000, plugs[i]);
    await host.configure("tap0", `10.0.0.${i + 1}/24`);
    await host.sh(["ip", "addr", "add", `fd77::${i + 1}/64`, "dev", "tap0", "nodad"]);
  }
  assert.ok(await a.pingable("10.0.0.2"), "host 1 cannot ping host 2");
  assert.ok(await a.pingable("fd77::2"), "host 1 cannot ping host 2 over IPv6");
  const before = await plugCounters(a, names[0]);
  const beforeB = await plugCounters(b, names[1]);
  const kernelBefore = [await kernelCounts(a), await kernelCounts(b)];

  const server = b.spawn([
    Deno.execPath(),
    "run",
    "-A",
    "--unstable-net",
    PEER,
    "serve",
    `${PORT}`,
    "4",
  ]);
  await server.waitForOutput((text) => text.includes("listening"), 30_000);
  // Floods both ways and both families, with payloads that span the frame; ping checks each reply.
  const pings = [
    a.spawn(["ping", "-f", "-s", "1400", "10.0.0.2"]),
    b.spawn(["ping", "-f", "-s", "600", "fd77::1"]),
    b.spawn(["ping", "-f", "-s", "56", "10.0.0.1"]),
  ];
  const client = await a.run([
    Deno.execPath(),
    "run",
    "-A",
    "--unstable-net",
    PEER,
    "connect",
    `${PORT}`,
    `${STREAM_BYTES}`,
    "10.0.0.2",
    "10.0.0.2",
    "fd77::2",
    "fd77::2",
    "10.0.0.2",
  ], { timeoutMs: 120_000 });
  for (const ping of pings) await ping.stop("SIGINT");
  assert.equal(client.code, 0, `the client failed: ${client.stdout}${client.stderr}`);
  assert.equal((await server.exited()).code, 0, `the server failed: ${server.stderr}`);
  const sent = JSON.parse(client.stdout.trim().split("\n").at(-1)!);
  const received = JSON.parse(server.stdout.trim().split("\n").at(-1)!);
  const after = await plugCounters(a, names[0]);
  const afterB = await plugCounters(b, names[1]);
  const kernelAfter = [await kernelCounts(a), await kernelCounts(b)];

  for (const [side, results] of [["host 2", received.tcp], ["host 1", sent.tcp]] as const) {
    assert.equal(results.length, 4);
    for (const result of results as StreamResult[]) {
      assert.equal(
        result.firstWrong,
        -1,
        `${side}, stream ${result.seed}: byte ${result.firstWrong} is wrong`,
      );
      assert.equal(result.checked, STREAM_BYTES, `${side}, stream ${result.seed}: bytes missing`);
    }
  }
  assert.equal(received.udp.wrong, 0, `${received.udp.wrong} UDP datagrams arrived wrong`);
  assert.ok(received.udp.right > 0, `no UDP datagram arrived of ${sent.udpSent}`);
  for (const [h, side] of ["host 1", "host 2"].entries()) {
    for (const [name, count] of Object.entries(kernelAfter[h])) {
      if (!name.endsWith("InCsumErrors")) continue;
      const more = count - kernelBefore[h][name];
      assert.equal(more, 0, `${side}'s kernel counted ${more} ${name}: a payload changed`);
    }
  }
  noWrongReplies(pings[0], "host 1's IPv4 ping flood");
  noWrongReplies(pings[1], "host 2's IPv6 ping flood");
  noWrongReplies(pings[2], "host 2's small IPv4 ping flood");

  // The paths under test were taken: super-frames cut from the TAPs, runs received as runs.
  for (
    const [side, was, now] of [["host 1", before, after], ["host 2", beforeB, afterB]] as const
  ) {
    const [tapWas, overlayWas] = was, [tapNow, overlayNow] = now;
    assert.ok(
      tapNow.superFramesIn > tapWas.superFramesIn,
      `${side}'s TAP handed over no super-frame`,
    );
    assert.ok(
      tapNow.superFramesOut > tapWas.superFramesOut,
      `${side}'s TAP was written no super-frame`,
    );
    const runs = overlayNow.superFramesIn - overlayWas.superFramesIn;
    if (vnl.startsWith("vxvde")) assert.ok(runs > 0, `${side}'s plug received no run`);
    // Frames longer than a sealed datagram carries (the 1400-byte ping flood's) go in pieces.
    if (vnl.includes("key=")) {
      const cut = overlayNow.framesCut - overlayWas.framesCut;
      assert.ok(cut > 0, `${side}'s plug sent no frame in pieces`);
    }
    // A keyed plug opens runs where they arrived: a datagram opened twice would count here.
    for (const name of ["dropAuthFailed", "dropReplay"]) {
      const more = overlayNow[name] - overlayWas[name];
      assert.equal(more, 0, `${side}'s plug counted ${more} ${name}`);
    }
  }
  for (const plug of plugs) await plug.stop();
  console.log(
    `${vnl}: 4 x ${STREAM_BYTES} bytes each way checked; UDP ${received.udp.right} of ` +
      `${sent.udpSent} datagrams arrived, all right; TCP retransmissions (told, not judged: ` +
      `they follow the machine's load) ${
        [0, 1].map((h) => kernelAfter[h]["Tcp:RetransSegs"] - kernelBefore[h]["Tcp:RetransSegs"])
          .join(" and ")
      }`,
  );
}

hostTest(
  "four TCP streams both ways, pings and UDP cross two vdeno plugs on vxvde:// with every byte right",
  ["ping"],
  () => everyByteArrives("vxvde://239.7.3.1"),
);

hostTest(
  "the same streams cross two vdeno plugs on vxvde:// over an IPv6 underlay with every byte right",
  ["ping"],
  () => everyByteArrives("vxvde://ff05::7:31"),
);

hostTest(
  "the same streams cross vxvde:// on a 1000-byte underlay, a super-frame cut across batches",
  ["ping"],
  () => everyByteArrives("vxvde://239.7.3.3", 1000),
);

/** {@linkcode everyByteArrives} on a keyed vxvde network at `group`, with a key file of its own. */
async function everyByteArrivesKeyed(group: string, underlayMtu?: number): Promise<void> {
  const keyFile = await Deno.makeTempFile({ prefix: "vdeno-integrity-key-" });
  try {
    await Deno.writeTextFile(keyFile, newKeyText(), { mode: 0o600 });
    await everyByteArrives(`vxvde://${group}/key='${keyFile}'`, underlayMtu);
  } finally {
    await Deno.remove(keyFile);
  }
}

hostTest(
  "the same streams cross a keyed vxvde:// network, its runs opened where they arrived, every byte right",
  ["ping"],
  () => everyByteArrivesKeyed("239.7.3.4"),
);

hostTest(
  "the same streams cross a keyed vxvde:// network on a 1000-byte underlay, long frames in pieces",
  ["ping"],
  () => everyByteArrivesKeyed("239.7.3.5", 1000),
);

hostTest(
  "the same streams cross two vdeno plugs on vxlan:// with every byte right",
  ["ping"],
  () => everyByteArrives("vxlan://239.7.3.2/vni=73"),
);
