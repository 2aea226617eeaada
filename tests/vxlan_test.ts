/**
 * `vxlan://` against the Linux kernel's VXLAN device and vdeplug4's
 * `vde_plug vxlan://`, on namespace hosts.
 */

import assert from "node:assert/strict";
import { captureUdp } from "./_capture.ts";
import { type Host, hostTest, Lan, sleep, VDENO } from "./_harness.ts";
import { VnlError } from "../core/vnl.ts";
import { parseVxlan } from "../plugs/vxlan.ts";

/** A name for `vdeno plug --name`, unique on this machine (control sockets are shared). */
function plugName(what: string): string {
  return `vxlan-${Deno.pid}-${what}`;
}

/** Adds a kernel VXLAN device to `host` on `group` (dstport 4789, by eth0) with `cidr` on it. */
async function kernelVxlan(host: Host, vni: number, group: string, cidr: string, mac?: string) {
  await host.sh([
    "ip",
    "link",
    "add",
    "vx0",
    "type",
    "vxlan",
    "id",
    String(vni),
    "group",
    group,
    "dstport",
    "4789",
    "dev",
    "eth0",
  ]);
  await host.configure("vx0", cidr, mac);
}

/** Starts `vdeno plug tap://tap0 VNL` on `host` and puts `cidr` on tap0. */
async function vdenoMember(host: Host, vnl: string, cidr: string, name?: string, mac?: string) {
  const plug = host.vdeno(["plug", ...(name ? ["--name", name] : []), "tap://tap0", vnl]);
  await host.waitForLink("tap0", 30_000, plug);
  await host.configure("tap0", cidr, mac);
  return plug;
}

Deno.test("parseVxlan: vdeplug4's defaults and options, prefix keys, one clear error", () => {
  const plain = parseVxlan("");
  assert.equal(plain.group.toString(), "239.0.0.1:4789");
  assert.deepEqual([plain.vni, plain.ttl, plain.hashSize, plain.expireSeconds], [1, 1, 1024, 128]);
  assert.equal(parseVxlan("/v6").group.toString(), "[ff05:56de::1]:4789");
  assert.equal(parseVxlan("[ff05::42]").group.toString(), "[ff05::42]:4789");
  const full = parseVxlan("239.1.1.1/vn=42/p=4790/t=3/r=1M/h=4096/e=60/i=eth9");
  assert.equal(full.group.toString(), "239.1.1.1:4790");
  assert.deepEqual(
    [full.vni, full.ttl, full.receiveBuffer, full.hashSize, full.expireSeconds, full.interfaceName],
    [42, 3, 1024 * 1024, 4096, 60, "eth9"],
  );
  assert.equal(parseVxlan("/v=7").vni, 7, "v is vni's prefix before v6's and v4's, as in vdeplug4");
  for (
    const [rest, message] of [
      ["10.1.2.3", /not a multicast address/],
      ["ff05::1/v4", /expected a numeric IPv4 multicast address/],
      ["/vni=16777216", /Bad vni/],
      ["/port=0", /Bad port/],
      ["/colour=red", /Unknown key in vxlan:\/\/ VNL: colour/],
    ] as const
  ) {
    assert.throws(() => parseVxlan(rest), (error: Error) => {
      assert.ok(error instanceof VnlError);
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"));
      return true;
    });
  }
});

hostTest(
  "vdeno vxlan:// and a kernel VXLAN device ping each other, then go by unicast to port 4789",
  ["ping", "tcpdump"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdenoMember(a, "vxlan://239.8.0.1/vni=42", "10.0.0.1/24");
    await kernelVxlan(b, 42, "239.8.0.1", "10.0.0.2/24");
    assert.ok(await a.pingable("10.0.0.2"), "vdeno cannot ping the kernel VXLAN device");
    assert.ok(await b.pingable("10.0.0.1"), "the kernel VXLAN device cannot ping vdeno");
    const datagrams = await captureUdp(a, "eth0", async () => {
      await a.sh(["ping", "-c", "5", "-i", "0.1", "10.0.0.2"]);
      await b.sh(["ping", "-c", "5", "-i", "0.1", "10.0.0.1"]);
    });
    // An echo request or reply (84 bytes of IPv4) in a frame, in VXLAN: 8 + 14 + 84 bytes.
    const echoes = datagrams.filter((d) => d.length === 106);
    const fromA = echoes.filter((d) => d.source.startsWith(`${a.address}.`));
    const fromB = echoes.filter((d) => d.source.startsWith(`${b.address}.`));
    assert.ok(fromA.length >= 5 && fromB.length >= 5, JSON.stringify(datagrams));
    // Once learned, each side sends to the other's address at the network's port, never the group.
    for (const d of fromA) assert.equal(d.destination, `${b.address}.4789`, JSON.stringify(d));
    for (const d of fromB) assert.equal(d.destination, `${a.address}.4789`, JSON.stringify(d));
  },
);

/** Runs `action` while tcpdump prints what `filter` matches on `iface` of `host`; returns its lines. */
async function captureText(
  host: Host,
  iface: string,
  filter: string,
  action: () => Promise<unknown>,
): Promise<string> {
  const tcpdump = host.spawn(["tcpdump", "-i", iface, "-nn", "-l", "-e", filter]);
  await tcpdump.waitForOutput((text) => text.includes("listening on"));
  await action();
  await sleep(500);
  await tcpdump.stop("SIGINT");
  return tcpdump.stdout;
}

async function plugStatus(host: Host, name: string) {
  return JSON.parse(await host.sh([...VDENO, "status", "--json", name]));
}

hostTest(
  "TCP crosses both ways between vdeno and a kernel VXLAN device whose checksum offload is off",
  ["iperf3", "ethtool"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdenoMember(a, "vxlan://239.8.0.12/vni=3", "10.0.0.1/24");
    await kernelVxlan(b, 3, "239.8.0.12", "10.0.0.2/24");
    // Over veth the kernel would leave the inner TCP checksum to an offload that never happens.
    await b.sh(["ethtool", "-K", "vx0", "tx", "off"]);
    assert.ok(await a.pingable("10.0.0.2"));
    const server = b.spawn(["iperf3", "-s", "--forceflush"]);
    await server.waitForOutput((text) => text.includes("listening"));
    for (const reverse of [false, true]) {
      const client = await a.run(
        ["iperf3", "-c", "10.0.0.2", "-n", "20M", "-J", ...(reverse ? ["-R"] : [])],
        { timeoutMs: 60_000 },
      );
      assert.equal(client.code, 0, `iperf3${reverse ? " -R" : ""}: ${client.stdout.slice(-500)}`);
      const received = JSON.parse(client.stdout).end.sum_received.bytes;
      // The receiver's count stops when the sender has written its last byte, a little short.
      assert.ok(received >= 10 * 1024 * 1024, `received ${received} bytes`);
    }
  },
);

hostTest(
  "with if= and no multicast route, vdeno status shows the kernel device's MAC at its address and port 4789",
  [
    "ping",
  ],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    const name = plugName("status");
    // if=, as the kernel's dev: the interface to join and flood on, whatever the routes say.
    await a.sh(["ip", "route", "del", "224.0.0.0/4", "dev", "eth0"]);
    await vdenoMember(a, "vxlan://239.8.0.4/vni=7/if=eth0", "10.0.0.1/24", name);
    await kernelVxlan(b, 7, "239.8.0.4", "10.0.0.2/24", "02:00:00:00:07:02");
    assert.ok(await a.pingable("10.0.0.2"));
    const [, vx] = (await plugStatus(a, name)).plugs;
    assert.equal(vx.vnl, "vxlan://239.8.0.4/vni=7/if=eth0");
    const learned = vx.learned.find((entry: { mac: string }) => entry.mac === "02:00:00:00:07:02");
    assert.ok(learned, JSON.stringify(vx.learned));
    assert.equal(learned.peer, `${b.address}:4789`);
    assert.deepEqual(vx.peers, [`${b.address}:4789`]);
    assert.ok(vx.counters.sentUnicast > 0, JSON.stringify(vx.counters));
  },
);

hostTest(
  "vdeno vxlan:// and a kernel VXLAN device ping over an IPv6 underlay, by unicast once learned",
  ["ping", "tcpdump"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdenoMember(a, "vxlan://ff05::8:42/vni=42", "10.0.0.1/24");
    await kernelVxlan(b, 42, "ff05::8:42", "10.0.0.2/24");
    assert.ok(await a.pingable("10.0.0.2"), "vdeno cannot ping the kernel VXLAN device");
    assert.ok(await b.pingable("10.0.0.1"), "the kernel VXLAN device cannot ping vdeno");
    const datagrams = await captureUdp(a, "eth0", async () => {
      await a.sh(["ping", "-c", "5", "-i", "0.1", "10.0.0.2"]);
      await b.sh(["ping", "-c", "5", "-i", "0.1", "10.0.0.1"]);
    });
    // tcpdump prints addresses in their shortest form.
    const [addressA, addressB] = [a, b].map((h) => new URL(`http://[${h.address6}]`).hostname);
    const echoes = datagrams.filter((d) => d.length === 106);
    const fromA = echoes.filter((d) => d.source.startsWith(`${addressA.slice(1, -1)}.`));
    const fromB = echoes.filter((d) => d.source.startsWith(`${addressB.slice(1, -1)}.`));
    assert.ok(fromA.length >= 5 && fromB.length >= 5, JSON.stringify(datagrams));
    for (const d of fromA) assert.equal(d.destination, `${addressB.slice(1, -1)}.4789`);
    for (const d of fromB) assert.equal(d.destination, `${addressA.slice(1, -1)}.4789`);
  },
);

hostTest(
  "a different VNI isolates: vdeno reaches the kernel device on its VNI, not the one on another",
  ["ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const name = plugName("vni");
    await vdenoMember(a, "vxlan://239.8.0.5/vni=42", "10.0.0.1/24", name);
    await kernelVxlan(b, 42, "239.8.0.5", "10.0.0.2/24");
    await kernelVxlan(c, 43, "239.8.0.5", "10.0.0.3/24");
    assert.ok(await a.pingable("10.0.0.2"), "vdeno cannot ping the device on its own VNI");
    assert.equal(await a.pingable("10.0.0.3", 3000), false, "vdeno reached a device on VNI 43");
    assert.equal(await c.pingable("10.0.0.1", 3000), false, "a device on VNI 43 reached vdeno");
    const [, vx] = (await plugStatus(a, name)).plugs;
    assert.ok(vx.counters.dropWrongHeader > 0, "the floods of VNI 43 were not counted as dropped");
  },
);

hostTest("malformed VXLAN datagrams are dropped and counted, and the member keeps working", [
  "ping",
], async () => {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const name = plugName("junk");
  await vdenoMember(a, "vxlan://239.8.0.6/vni=42", "10.0.0.1/24", name);
  await kernelVxlan(b, 42, "239.8.0.6", "10.0.0.2/24");
  const junk = new URL("./fixtures/junk_sender.ts", import.meta.url).pathname;
  const kinds = ["short", "flags", "vni", "reserved", "tiny", "huge", "goodbye"];
  const sent = JSON.parse(
    await b.sh([Deno.execPath(), "run", "-A", junk, a.address, "4789", "42", "50", ...kinds]),
  );
  assert.ok(await a.pingable("10.0.0.2"), "the member stopped working after junk");
  const [, vx] = (await plugStatus(a, name)).plugs;
  const c = vx.counters;
  assert.equal(c.dropMalformed, sent.short, JSON.stringify(c));
  assert.equal(c.dropWrongHeader, sent.flags + sent.vni + sent.reserved, JSON.stringify(c));
  assert.equal(c.dropTooShort, sent.tiny + sent.goodbye, JSON.stringify(c));
  assert.equal(c.dropTooLong, sent.huge, JSON.stringify(c));
});

hostTest(
  "one member per host and port: a second one gets one line suggesting another port=",
  [],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdenoMember(a, "vxlan://239.8.0.7", "10.0.0.1/24");
    const second = await a.run([...VDENO, "plug", "tap://tap1", "vxlan://239.8.0.7"]);
    assert.notEqual(second.code, 0);
    assert.equal(second.stderr.trim().split("\n").length, 1, second.stderr);
    assert.match(second.stderr, /port 4789 is taken on this host.*port=/);
    // A kernel VXLAN device holds its port just as well.
    await kernelVxlan(b, 1, "239.8.0.7", "10.0.0.2/24");
    const besideKernel = await b.run([...VDENO, "plug", "tap://tap1", "vxlan://239.8.0.7"]);
    assert.notEqual(besideKernel.code, 0);
    assert.match(besideKernel.stderr, /port 4789 is taken on this host.*port=/);
    // Another port is another network, and opens.
    const other = a.vdeno(["plug", "tap://tap1", "vxlan://239.8.0.7/port=4790"]);
    await a.waitForLink("tap1", 30_000, other);
    // An IPv6 network leaves port 4789 to IPv4 ones, as the kernel's VXLAN sockets do.
    const overIPv6 = a.vdeno(["plug", "tap://tap2", "vxlan://ff05::8:7"]);
    await a.waitForLink("tap2", 30_000, overIPv6);
  },
);

hostTest(
  "vde_plug vxlan:// and vdeno exchange floods both ways, and vdeno's unicast reaches vde_plug",
  ["vde_plug", "ping", "tcpdump"],
  async () => {
    // vdeplug 4.0.1 cannot send vxlan unicast (its sendmsg goes out with no address), so ARP
    // requests (broadcast) are what it can send; a ping needs unicast both ways and is not tried.
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdenoMember(a, "vxlan://239.8.0.8/vni=9", "10.0.0.1/24", undefined, "02:00:00:00:09:01");
    const vdePlug = b.spawn(["vde_plug", "tap://tap0", "vxlan://239.8.0.8/vni=9"]);
    await b.waitForLink("tap0", 30_000, vdePlug);
    await b.configure("tap0", "10.0.0.2/24", "02:00:00:00:09:02");
    const atVdePlug = await captureText(b, "tap0", "arp", async () => {
      await a.run(["ping", "-c", "2", "-W", "1", "10.0.0.2"]);
    });
    assert.match(atVdePlug, /Request who-has 10\.0\.0\.2 tell 10\.0\.0\.1/, "vdeno's flood");
    // h2 learned h1's address from its request: forgetting it makes h2 ask the whole network.
    await b.sh(["ip", "neigh", "flush", "dev", "tap0"]);
    let underlay: Awaited<ReturnType<typeof captureUdp>> = [];
    const atVdeno = await captureText(a, "tap0", "arp", async () => {
      underlay = await captureUdp(b, "eth0", async () => {
        await b.run(["ping", "-c", "2", "-W", "1", "10.0.0.1"]);
      });
    });
    assert.match(atVdeno, /Request who-has 10\.0\.0\.1 tell 10\.0\.0\.2/, "vde_plug's flood");
    // vdeno answers vde_plug's ARP request by unicast to its address at port 4789.
    const replies = underlay.filter((d) => d.source.startsWith(`${a.address}.`) && d.length === 50);
    assert.ok(replies.length > 0, JSON.stringify(underlay));
    for (const d of replies) assert.equal(d.destination, `${b.address}.4789`);
  },
);

hostTest(
  "vdeno ns vxlan:// puts a namespace on the kernel device's network",
  ["unshare", "ping"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await kernelVxlan(b, 5, "239.8.0.11", "10.0.0.2/24");
    const script = "ip addr add 10.0.0.1/24 dev vde0 && ip link set vde0 up && " +
      "for i in $(seq 30); do ping -c 1 -W 1 10.0.0.2 >/dev/null && exit 0; done; exit 1";
    const result = await a.run(
      [...VDENO, "ns", "vxlan://239.8.0.11/vni=5", "--", "sh", "-c", script],
      {
        timeoutMs: 60_000,
      },
    );
    assert.equal(result.code, 0, `${result.stdout}${result.stderr}`);
  },
);
