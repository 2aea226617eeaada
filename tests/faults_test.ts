/**
 * Faults on the namespace LAN: a peer killed without a goodbye, a MAC that
 * moves to another host, and an underlay link that goes down and comes back.
 * vxvde has no daemon to repair anything, so each plug must recover on its
 * own: by expiry, by learning from the next frame, by keeping its sockets.
 */

import assert from "node:assert/strict";
import { addressOf, captureUdp, type Datagram, PING_DATAGRAM } from "./_capture.ts";
import { type Host, hostTest, Lan, type Process, sleep, VDENO, waitUntil } from "./_harness.ts";

/** Everything `a` sees on its underlay while it pings 10.0.0.2 three times, and its echo requests. */
async function echoRequestsFrom(a: Host): Promise<{ seen: Datagram[]; requests: Datagram[] }> {
  const seen = await captureUdp(
    a,
    "eth0",
    () => a.sh(["ping", "-c", "3", "-i", "0.2", "10.0.0.2"]),
  );
  const requests = seen.filter((d) =>
    d.length === PING_DATAGRAM && addressOf(d.source) === a.address
  );
  return { seen, requests };
}

interface Learned {
  mac: string;
  peer: string;
  ageSeconds: number;
}

interface VxvdeStatus {
  unicastPort: number;
  counters: Record<string, number>;
  learned: Learned[];
}

/** The vxvde side (the second VNL) of plug `name` running in `host`. */
async function vxvdeStatus(host: Host, name: string): Promise<VxvdeStatus> {
  return JSON.parse(await host.sh([...VDENO, "status", "--json", name])).plugs[1];
}

/** Starts `vdeno plug tap://tap0 VNL` in `host` and gives tap0 an address and a fixed MAC. */
async function tapPlug(
  host: Host,
  name: string,
  vnl: string,
  cidr: string,
  mac: string,
): Promise<Process> {
  const plug = host.vdeno(["plug", "--name", name, "tap://tap0", vnl]);
  await host.waitForLink("tap0");
  await host.configure("tap0", cidr, mac);
  return plug;
}

const MAC_B = "02:00:00:00:0b:0b";

hostTest(
  "a peer killed without a goodbye: its MAC falls back to the group after expiretime, then reaches its replacement on a new port",
  ["tcpdump", "ping"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    const vnl = "vxvde://239.8.0.1/expiretime=3";
    await tapPlug(a, "stayer", vnl, "10.0.0.1/24", "02:00:00:00:0a:0a");
    const first = await tapPlug(b, "victim", vnl, "10.0.0.2/24", MAC_B);
    assert.ok(await a.pingable("10.0.0.2"));
    // The kernel of a must keep sending to MAC_B whatever happens to b's neighbour entry.
    await a.sh([
      "ip",
      "neigh",
      "replace",
      "10.0.0.2",
      "lladdr",
      MAC_B,
      "dev",
      "tap0",
      "nud",
      "permanent",
    ]);
    const oldPort = (await vxvdeStatus(b, "victim")).unicastPort;
    const learnedB = (await vxvdeStatus(a, "stayer")).learned.find((e) => e.mac === MAC_B);
    assert.equal(learnedB?.peer, `${b.address}:${oldPort}`, "a learned MAC_B behind b's plug");

    first.child.kill("SIGKILL");
    await first.exited();
    await waitUntil(
      "the entry for MAC_B expires",
      async () => !(await vxvdeStatus(a, "stayer")).learned.some((e) => e.mac === MAC_B),
    );
    const whileGone = await captureUdp(
      a,
      "eth0",
      () => a.run(["ping", "-c", "1", "-W", "1", "10.0.0.2"]),
    );
    const echoes = whileGone.filter((d) => d.length === PING_DATAGRAM);
    assert.deepEqual(
      echoes.map((d) => d.destination),
      ["239.8.0.1.14789"],
      `after expiry a frame for MAC_B goes to the group only: ${JSON.stringify(whileGone)}`,
    );

    await waitUntil(
      "the killed plug's TAP disappears",
      async () => (await b.run(["ip", "link", "show", "tap0"])).code !== 0,
    );
    await tapPlug(b, "victim2", vnl, "10.0.0.2/24", MAC_B);
    const newPort = (await vxvdeStatus(b, "victim2")).unicastPort;
    assert.notEqual(newPort, oldPort, "the replacement listens on another port");
    assert.ok(await a.pingable("10.0.0.2"), "the replacement answers");
    const { seen, requests: toB } = await echoRequestsFrom(a);
    assert.deepEqual(
      toB.map((d) => d.destination),
      Array(3).fill(`${b.address}.${newPort}`),
      `echo requests by unicast to the replacement's port: ${JSON.stringify(seen)}`,
    );
    const relearned = (await vxvdeStatus(a, "stayer")).learned.find((e) => e.mac === MAC_B);
    assert.equal(relearned?.peer, `${b.address}:${newPort}`);
  },
);

hostTest(
  "a MAC that moves to another host is followed from its first frame there, not after expiry",
  ["tcpdump", "ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    // The default expiretime (128 s): only learning can explain the switch.
    const vnl = "vxvde://239.8.0.2";
    await tapPlug(a, "watcher", vnl, "10.0.0.1/24", "02:00:00:00:0a:0a");
    const before = await tapPlug(b, "before", vnl, "10.0.0.2/24", MAC_B);
    assert.ok(await a.pingable("10.0.0.2"));
    const portB = (await vxvdeStatus(b, "before")).unicastPort;
    assert.equal(
      (await vxvdeStatus(a, "watcher")).learned.find((e) => e.mac === MAC_B)?.peer,
      `${b.address}:${portB}`,
    );
    // The VM is gone from b without a goodbye, as when a host dies mid-migration.
    before.child.kill("SIGKILL");
    await before.exited();

    await tapPlug(c, "after", vnl, "10.0.0.2/24", MAC_B);
    const portC = (await vxvdeStatus(c, "after")).unicastPort;
    // One frame from the MAC's new home: c's ARP request for 10.0.0.1, to the group.
    await c.run(["ping", "-c", "1", "-W", "2", "10.0.0.1"]);
    assert.equal(
      (await vxvdeStatus(a, "watcher")).learned.find((e) => e.mac === MAC_B)?.peer,
      `${c.address}:${portC}`,
      "a learned the new place of MAC_B",
    );
    const { seen, requests } = await echoRequestsFrom(a);
    assert.deepEqual(
      requests.map((d) => d.destination),
      Array(3).fill(`${c.address}.${portC}`),
      `echo requests go by unicast to c, none to b: ${JSON.stringify(seen)}`,
    );
  },
);

hostTest(
  "a namespace of vdeno ns that moves to another host is followed from its first frame there",
  ["tcpdump", "ping", "unshare"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const vnl = "vxvde://239.8.0.4";
    await tapPlug(a, "nswatch", vnl, "10.0.0.1/24", "02:00:00:00:0a:0a");
    // The same namespace set-up on either host; its ping to 10.0.0.1 sends the first frame.
    const inside = `ip link set vde0 address ${MAC_B} && ip addr add 10.0.0.2/24 dev vde0 && ` +
      "ip link set vde0 up && ping -c 1 -W 2 10.0.0.1 >/dev/null; echo ready; exec sleep 600";
    const peerOfB = async () =>
      (await vxvdeStatus(a, "nswatch")).learned.find((e) => e.mac === MAC_B)?.peer ?? "none";
    const before = b.vdeno(["ns", vnl, "sh", "-c", inside]);
    await before.waitForOutput((text) => text.includes("ready"), 30_000);
    assert.ok(await a.pingable("10.0.0.2"));
    assert.match(await peerOfB(), new RegExp(`^${b.address.replaceAll(".", "\\.")}:`));
    await before.stop("SIGKILL");

    const after = c.vdeno(["ns", vnl, "sh", "-c", inside]);
    await after.waitForOutput((text) => text.includes("ready"), 30_000);
    assert.match(
      await peerOfB(),
      new RegExp(`^${c.address.replaceAll(".", "\\.")}:`),
      "a learned the namespace's new host",
    );
    const { seen, requests } = await echoRequestsFrom(a);
    assert.deepEqual(
      requests.map((d) => addressOf(d.destination)),
      Array(3).fill(c.address),
      `echo requests go by unicast to c: ${JSON.stringify(seen)}`,
    );
    await after.stop("SIGTERM");
  },
);

for (
  const mode of [
    { what: "the multicast route restored", vnl: "vxvde://239.8.0.3/expiretime=3", route: true },
    { what: "if=eth0 and nothing restored", vnl: "vxvde://239.8.0.3/expiretime=3/if=eth0" },
  ]
) {
  hostTest(
    `the underlay link goes down and up (${mode.what}): traffic resumes without restarting the plugs`,
    ["ping"],
    async () => {
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      const plugA = await tapPlug(a, "linkA", mode.vnl, "10.0.0.1/24", "02:00:00:00:0a:0a");
      const plugB = await tapPlug(b, "linkB", mode.vnl, "10.0.0.2/24", MAC_B);
      assert.ok(await a.pingable("10.0.0.2"));
      for (const [host, other] of [[a, "10.0.0.2"], [b, "10.0.0.1"]] as const) {
        await host.sh(["ip", "link", "set", "eth0", "down"]);
        // While it is down, the plug tries to send (and fails) and the peer's entry expires.
        await host.run(["ping", "-c", "2", "-i", "0.5", "-W", "1", other]);
        await sleep(3500);
        await host.sh(["ip", "link", "set", "eth0", "up"]);
        // Measured: the kernel keeps the socket's group membership across down and up
        // (ip maddr shows 239.8.0.3 on eth0 throughout), but bringing the link down
        // flushes the routes through it, the multicast route among them: without if=,
        // sends to the group fail until an administrator (or the network manager) puts
        // it back. With if=, IP_MULTICAST_IF picks the interface and no route is needed.
        if (mode.route) await host.sh(["ip", "route", "replace", "224.0.0.0/4", "dev", "eth0"]);
        // Forget the neighbours so that each direction starts with an ARP request to the group.
        for (const each of [a, b]) await each.sh(["ip", "neigh", "flush", "dev", "tap0"]);
        assert.ok(
          await a.pingable("10.0.0.2", 20_000),
          `pings resume after eth0 of ${host.netns} went down and up`,
        );
        for (const each of [a, b]) await each.sh(["ip", "neigh", "flush", "dev", "tap0"]);
        assert.ok(
          await b.pingable("10.0.0.1", 20_000),
          `and the other way after eth0 of ${host.netns} went down and up`,
        );
      }
      for (const [host, plug] of [[a, plugA], [b, plugB]] as const) {
        assert.equal(
          (await host.run(["kill", "-0", String(plug.child.pid)])).code,
          0,
          "the same plug process still runs",
        );
      }
    },
  );
}
