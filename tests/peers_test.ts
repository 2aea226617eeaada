/**
 * `peers=` on namespace hosts whose underlay carries no multicast: the hello
 * format and member list as pure functions, then real clouds where multicast
 * is dropped by the bridge (or by a router between two subnets), with the
 * real vde_plug as the witness that the group alone does not work there.
 */

import assert from "node:assert/strict";
import { AF_INET, AF_INET6, SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import {
  decodeHello,
  encodeHello,
  HELLO_MARK,
  helloHeader,
  MAX_HELLO,
  MAX_TOLD,
  Members,
  parsePeers,
  peersFamily,
  type ToldMember,
} from "../plugs/_peers.ts";
import { parseVxvde } from "../plugs/vxvde.ts";
import { parseVxlan } from "../plugs/vxlan.ts";
import { addressOf, captureUdp } from "./_capture.ts";
import { type Host, hostTest, Lan, type Process, sh, sleep, VDENO } from "./_harness.ts";
import { newKeyText } from "../plugs/seal.ts";

const v4 = (text: string) => {
  const [host, port] = text.split(":");
  return SocketAddress.parse(host, Number(port), AF_INET)!;
};
const v6 = (host: string, port: number) => SocketAddress.parse(host, port, AF_INET6)!;

Deno.test("hellos encode and decode, and malformed ones are refused", () => {
  const told = (address: SocketAddress, throughGroup = false) => ({ address, throughGroup });
  const cases: { members: ToldMember[] }[] = [
    { members: [] },
    { members: [told(v4("10.1.2.3:14789"))] },
    { members: [told(v6("fd00::1", 4789), true), told(v4("192.0.2.9:1"))] },
    {
      members: Array.from(
        { length: MAX_TOLD },
        (_, i) => told(v6(`fd00::${i + 1}`, 65535 - i), i % 2 === 0),
      ),
    },
  ];
  for (const { members } of cases) {
    const bytes = new Uint8Array(MAX_HELLO);
    const length = encodeHello({ instance: 0xdeadbeef, members }, bytes);
    const hello = decodeHello(bytes.subarray(0, length));
    assert.ok(hello, `decodes ${members.length} members`);
    assert.equal(hello.instance, 0xdeadbeef);
    const text = (list: ToldMember[]) => list.map((m) => `${m.address} ${m.throughGroup}`);
    assert.deepEqual(text(hello.members), text(members));
  }
  const good = new Uint8Array(MAX_HELLO);
  const length = encodeHello({ instance: 1, members: [told(v4("10.0.0.1:5"))] }, good);
  const malformed: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["too short", good.slice(0, 5)],
    ["another version", Uint8Array.of(2, ...good.subarray(1, length))],
    ["count beyond the limit", Uint8Array.of(1, MAX_TOLD + 1, 0, 0, 0, 1)],
    ["an entry cut short", good.slice(0, length - 1)],
    ["trailing bytes", good.slice(0, length + 1)],
    ["unknown family", Uint8Array.of(...good.subarray(0, 6), 5, ...good.subarray(7, length))],
    ["port 0", Uint8Array.of(...good.subarray(0, 7), 0, 0, ...good.subarray(9, length))],
  ];
  for (const [what, bytes] of malformed) assert.equal(decodeHello(bytes), undefined, what);
  for (const toGroup of [true, false]) {
    const sent = encodeHello({ instance: 7, members: [told(v4("10.0.0.1:5"))], toGroup }, good);
    assert.equal(
      decodeHello(good.subarray(0, sent))!.toGroup,
      toGroup,
      "sent to the group, or not",
    );
  }
  const more = encodeHello({
    instance: 1,
    members: Array.from({ length: MAX_TOLD + 5 }, (_, i) => told(v4(`10.0.0.${i + 1}:1`))),
  }, good);
  assert.equal(decodeHello(good.subarray(0, more))!.members.length, MAX_TOLD, "at most 20 told");
});

Deno.test("a hello's header differs from the frame header only in byte 2", () => {
  const header = Uint8Array.of(0x08, 0, 0, 0, 0, 0, 7, 0);
  assert.deepEqual([...helloHeader(header)], [0x08, 0, HELLO_MARK, 0, 0, 0, 7, 0]);
  const sealed = Uint8Array.of(0x08, 0, 0, 0x5e, 0, 0, 7, 0);
  assert.deepEqual([...helloHeader(sealed)], [0x08, 0, HELLO_MARK, 0x5e, 0, 0, 7, 0]);
});

Deno.test("peers= parses addresses, ports and names, and says what is wrong", () => {
  const resolve = (name: string, port: number, family: number) =>
    name === "h1" ? [family === AF_INET ? v4(`10.9.0.1:${port}`) : v6("fd09::1", port)] : [];
  const good: [string, number, string[]][] = [
    ["10.0.0.1", AF_INET, ["10.0.0.1:14789"]],
    ["10.0.0.1:4000, 10.0.0.2", AF_INET, ["10.0.0.1:4000", "10.0.0.2:14789"]],
    ["fd00::1", AF_INET6, ["[fd00::1]:14789"]],
    ["[fd00::1]:4000,[fd00::2]", AF_INET6, ["[fd00::1]:4000", "[fd00::2]:14789"]],
    ["h1", AF_INET, ["10.9.0.1:14789"]],
    ["h1:5,10.0.0.3", AF_INET, ["10.9.0.1:5", "10.0.0.3:14789"]],
    ["h1", AF_INET6, ["[fd09::1]:14789"]],
  ];
  for (const [text, family, expected] of good) {
    assert.deepEqual(parsePeers(text, 14789, family, resolve).map(String), expected, text);
  }
  const bad: [string, number, RegExp][] = [
    ["", AF_INET, /at least one address/],
    ["fd00::1", AF_INET, /is IPv6 but the network is IPv4/],
    ["10.0.0.1", AF_INET6, /is IPv4 but the network is IPv6/],
    ["10.0.0.1:0", AF_INET, /no valid port/],
    ["10.0.0.1:70000", AF_INET, /no valid port/],
    ["nowhere", AF_INET, /cannot resolve nowhere/],
    ["a b", AF_INET, /neither an address nor a host name/],
  ];
  for (const [text, family, message] of bad) {
    assert.throws(() => parsePeers(text, 14789, family, resolve), message, text);
  }
  assert.equal(peersFamily("[fd00::1]:5"), AF_INET6);
  assert.equal(peersFamily("fd00::1,fd00::2"), AF_INET6);
  assert.equal(peersFamily("10.0.0.1:5"), undefined);
  const config = parseVxvde("/peers=fd00::1/peert=5");
  assert.equal(config.group.toString(), "[ff05:56de::1]:14789", "an IPv6 seed implies v6");
  assert.equal(config.peerTimeout, 5);
  assert.equal(parseVxvde("239.1.1.1/p=4000/pe=10.0.0.1").peers![0].toString(), "10.0.0.1:4000");
  assert.throws(() => parseVxvde("/peertimeout=0/peers=10.0.0.1"), /peertimeout/);
  const vxlan = parseVxlan("/vni=43/peers=10.0.0.1,10.0.0.2:5000");
  assert.deepEqual(vxlan.peers!.map(String), ["10.0.0.1:4789", "10.0.0.2:5000"]);
  assert.equal(parseVxlan("/peers=[fd00::1]").group.toString(), "[ff05:56de::1]:4789");
});

Deno.test("the member list: seeds stay, told members must speak, goodbyes and silence drop", () => {
  const self = v4("10.0.0.1:14789");
  const seed = v4("10.0.0.2:14789");
  const members = new Members([seed, self], self, 10, 1000);
  assert.equal(members.size, 1, "our own address is no member");
  assert.equal(members.targetCount, 1, "floods go to the seed before it speaks");
  const told = members.told([v4("10.0.0.3:14789"), self, v4("239.0.0.1:5"), v4("0.0.0.0:5")], 1000);
  assert.deepEqual(told.map(String), ["10.0.0.3:14789"], "self, group and unspecified are skipped");
  assert.deepEqual(members.told([v4("10.0.0.3:14789")], 1001), [], "told twice, added once");
  assert.equal(members.heard(seed, false, 1001), true, "first hello from the seed");
  assert.equal(members.heard(seed, false, 1002), false, "then it is known");
  assert.deepEqual(
    members.sample(1002).map((m) => `${m.address} ${m.throughGroup}`),
    [`${seed} false`],
    "only heard members told",
  );
  // The told member never speaks: gone after the timeout. The seed fell silent: kept, not heard.
  assert.deepEqual(members.expire(1013).map(String), [seed.toString()]);
  assert.deepEqual(members.view(1013).map((m) => [m.address, m.source, m.lastHeardSeconds]), [
    [seed.toString(), "seed", null],
  ]);
  // A member heard through the group still gets unicast copies of floods until it says that it
  // hears us there too (multicast may work one way only).
  const local = v4("10.0.0.4:14789");
  assert.equal(members.heard(local, true, 1014), true);
  assert.equal(members.targetCount, 2);
  assert.deepEqual(members.view(1014).find((m) => m.address === local.toString())?.source, "group");
  assert.deepEqual(
    members.sample(1014, MAX_TOLD, local).map((m) => `${m.address} ${m.throughGroup}`)[0],
    `${local} true`,
    "a hello to it names it first, as heard through the group",
  );
  assert.equal(members.isOwn(self), true);
  members.hearsUs(local, true);
  assert.equal(members.targetCount, 1);
  const packed = new SocketAddress(members.targets.slice(0, SOCKADDR_SIZE));
  assert.equal(packed.toString(), seed.toString());
  assert.deepEqual(members.unicastMembers(1014).map(String), [seed.toString()]);
  members.hearsUs(local, false);
  assert.equal(members.targetCount, 2, "it no longer hears us there: copies again");
  // Goodbye: dropped at once, and not taken back from a hello that still lists it...
  const other = v4("10.0.0.5:14789");
  members.heard(other, false, 1015);
  assert.equal(members.goodbye(other, 1015), true);
  assert.equal(members.has(other), false);
  assert.deepEqual(members.told([other], 1016), []);
  // ...unless it speaks again (it restarted).
  assert.equal(members.heard(other, false, 1017), true);
  assert.equal(members.has(other), true);
  // A hello that echoes our own id marks the address as ours.
  members.isSelf(other);
  assert.equal(members.has(other), false);
  assert.deepEqual(members.told([other], 1018), []);
});

Deno.test("the member list: a seed that never speaks is greeted often for one timeout only; answers out of turn once a round", () => {
  const kernel = v4("10.0.0.9:4789");
  const members = new Members([kernel], undefined, 8, 1000);
  assert.deepEqual(members.unheard(1005).map(String), [kernel.toString()]);
  assert.deepEqual(members.expire(1009), [], "a seed is never dropped");
  assert.deepEqual(members.unheard(1009), [], "after a timeout unheard, it waits for the rounds");
  assert.equal(members.targetCount, 1, "floods still go to it");
  // It speaks, then falls silent: greeted often again, and its MACs are stale.
  members.heard(kernel, false, 1010);
  assert.deepEqual(members.expire(1019).map(String), [kernel.toString()]);
  assert.deepEqual(members.unheard(1019).map(String), [kernel.toString()]);
  // Out-of-turn answers: at most one per quarter of the timeout.
  members.heard(kernel, false, 1020);
  assert.equal(members.mayAnswer(kernel, 1020), true);
  assert.equal(members.mayAnswer(kernel, 1021), false);
  assert.equal(members.mayAnswer(kernel, 1022.5), true);
  assert.equal(members.mayAnswer(v4("10.0.0.99:1"), 1022.5), false, "not for strangers");
});

/** An IP address in one spelling, to compare tcpdump's with ours. */
function ip(text: string): string {
  return SocketAddress.parse(text, 0)?.toString() ?? text;
}

/** Turns off multicast flooding on every port of the LAN's bridges: no multicast crosses it. */
async function dropMulticast(lan: Lan, switchNs = `${lan.id}-sw`): Promise<void> {
  const ports = JSON.parse(
    await runIn(switchNs, ["ip", "-j", "link", "show", "type", "veth"]),
  ) as { ifname: string }[];
  for (const { ifname } of ports) {
    await runIn(switchNs, ["bridge", "link", "set", "dev", ifname, "mcast_flood", "off"]);
  }
}

/**
 * Without multicast the underlay's IPv6 neighbour discovery fails too: each
 * host gets its neighbours' MACs as permanent entries, as a cloud's network
 * answers for it.
 */
async function staticNeighbours(hosts: Host[]): Promise<void> {
  const macs: string[] = [];
  for (const host of hosts) {
    macs.push(JSON.parse(await host.sh(["ip", "-j", "link", "show", "eth0"]))[0].address);
  }
  for (const host of hosts) {
    for (const [j, other] of hosts.entries()) {
      if (other === host) continue;
      await host.sh([
        ...["ip", "-6", "neigh", "replace", other.address6, "lladdr", macs[j]],
        ...["dev", "eth0", "nud", "permanent"],
      ]);
    }
  }
}

async function runIn(netns: string, argv: string[]): Promise<string> {
  const output = await new Deno.Command("ip", {
    args: ["netns", "exec", netns, ...argv],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) {
    throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  }
  return new TextDecoder().decode(output.stdout);
}

/** Overlay addresses 10.0.0.N on each host's tap0, MACs 02:00:00:00:00:0N. */
async function overlay(hosts: Host[], creators: Process[]): Promise<string[]> {
  const addresses: string[] = [];
  for (const [i, host] of hosts.entries()) {
    await host.waitForLink("tap0", 30_000, creators[i]);
    await host.configure("tap0", `10.0.0.${i + 1}/24`, `02:00:00:00:00:0${i + 1}`);
    addresses.push(`10.0.0.${i + 1}`);
  }
  return addresses;
}

/** Asserts that every host pings every other on the overlay. */
async function pingAll(hosts: Host[], addresses: string[]): Promise<void> {
  for (const [i, host] of hosts.entries()) {
    for (const [j, address] of addresses.entries()) {
      if (i === j) continue;
      assert.ok(await host.pingable(address, 30_000), `h${i + 1} pings h${j + 1} (${address})`);
    }
  }
}

hostTest(
  "precondition: with multicast dropped on the underlay, a vde_plug vxvde pair cannot ping",
  ["vde_plug", "bridge"],
  async () => {
    await using lan = await Lan.create(2);
    await dropMulticast(lan);
    const [a, b] = lan.hosts;
    const plugs = [a, b].map((host) => host.spawn(["vde_plug", "tap://tap0", "vxvde://239.7.0.1"]));
    const [, addressB] = await overlay([a, b], plugs);
    assert.ok(!(await a.pingable(addressB, 4000)), "the group carries nothing here");
  },
);

for (const family of ["IPv4", "IPv6"] as const) {
  hostTest(
    `peers= naming only h1: three hosts ping every pair with multicast dropped (${family}), h2<->h3 not through h1`,
    ["bridge", "tcpdump"],
    async () => {
      await using lan = await Lan.create(3);
      await dropMulticast(lan);
      if (family === "IPv6") await staticNeighbours(lan.hosts);
      const [h1, h2, h3] = lan.hosts;
      const seed = family === "IPv4" ? h1.address : `[${h1.address6}]`;
      const vnl = `vxvde://${family === "IPv4" ? "239.7.0.2" : "ff05::7:2"}/peers=${seed}`;
      const plugs = lan.hosts.map((host) => host.vdeno(["plug", "tap://tap0", vnl]));
      const addresses = await overlay(lan.hosts, plugs);
      await pingAll(lan.hosts, addresses);
      const underlay = (host: Host) => ip(family === "IPv4" ? host.address : host.address6);
      const seen = await captureUdp(h1, "eth0", async () => {
        await h2.sh(["ping", "-c", "5", "-i", "0.2", addresses[2]]);
        await h3.sh(["ping", "-c", "5", "-i", "0.2", addresses[1]]);
      });
      const viaH1 = seen.filter((d) =>
        [ip(addressOf(d.source)), ip(addressOf(d.destination))].includes(underlay(h1)) &&
        d.length > 100
      );
      assert.deepEqual(viaH1, [], "no frame between h2 and h3 passed through h1");
      const direct = await captureUdp(h3, "eth0", () => h2.sh(["ping", "-c", "3", addresses[2]]));
      assert.ok(
        direct.some((d) => ip(addressOf(d.source)) === underlay(h2) && d.length > 100),
        `h3 receives h2's frames straight from h2: ${JSON.stringify(direct)}`,
      );
    },
  );
}

interface MemberStatus {
  address: string;
  source: string;
  lastHeardSeconds: number | null;
  viaGroup: boolean;
}

interface VxvdeStatus {
  counters: Record<string, number>;
  learned: { mac: string; peer: string }[];
  members: MemberStatus[];
  listener: string;
}

/** The status of the vxvde end of the plug named `name` on `host`. */
async function vxStatus(host: Host, name: string): Promise<VxvdeStatus> {
  const report = JSON.parse(await host.sh([...VDENO, "status", "--json", name]));
  return report.plugs.find((plug: { vnl: string }) => plug.vnl.startsWith("vxvde://"));
}

/** Waits until `condition` holds, or fails with `what` after `timeoutMs`. */
async function eventually(
  what: string,
  condition: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Not within ${timeoutMs} ms: ${what}`);
    await sleep(200);
  }
}

/** Whether `host`'s plug `name` has heard a member at `underlay` (any port, or `port`). */
async function hears(host: Host, name: string, underlay: string, port?: number): Promise<boolean> {
  const status = await vxStatus(host, name);
  return status.members.some((member) => {
    const at = member.address.lastIndexOf(":");
    return ip(member.address.slice(0, at).replace(/^\[|\]$/g, "")) === ip(underlay) &&
      (port === undefined || Number(member.address.slice(at + 1)) === port) &&
      member.lastHeardSeconds !== null;
  });
}

hostTest(
  "peers=: goodbye drops a member at once, death after the timeout; a restarted member is found again, on a new port too",
  ["bridge", "ping", "ss"],
  async () => {
    await using lan = await Lan.create(3);
    await dropMulticast(lan);
    const [h1, h2, h3] = lan.hosts;
    const timeout = 6;
    const vnl = `vxvde://239.7.0.3/peers=${h1.address}/peertimeout=${timeout}`;
    const names = lan.hosts.map((_, i) => `${lan.id}-p${i + 1}`);
    const start = (i: number) => lan.hosts[i].vdeno(["plug", "-n", names[i], "tap://tap0", vnl]);
    const plugs = [start(0), start(1), start(2)];
    const addresses = await overlay(lan.hosts, plugs);
    await pingAll(lan.hosts, addresses);
    const othersHear = async (port?: number) =>
      (await hears(h1, names[0], h3.address, port)) &&
      (await hears(h2, names[1], h3.address, port));
    const noneHears = async () =>
      !(await hears(h1, names[0], h3.address)) && !(await hears(h2, names[1], h3.address));
    await eventually("h1 and h2 hear h3", othersHear, 5000);
    // vdeno status NAME shows them as a table.
    const text = await h1.sh([...VDENO, "status", names[0]]);
    assert.match(text, /MEMBER\s+SOURCE\s+LAST HEARD\s+VIA/);
    for (const host of [h2, h3]) {
      assert.match(
        text,
        new RegExp(
          `${host.address.replaceAll(".", "\\.")}:14789\\s+hello\\s+[\\d.]+s ago\\s+unicast`,
        ),
      );
    }
    assert.match(text, new RegExp(`listener: ${h1.address.replaceAll(".", "\\.")}:14789`));

    // Goodbye: gone well before the timeout could have dropped it.
    assert.equal((await plugs[2].stop("SIGTERM")).code, 0);
    await eventually("h1 and h2 drop h3 on its goodbye", noneHears, (timeout * 1000) / 3);

    // Back on the same address and port: reachable again at once.
    plugs[2] = start(2);
    await h3.waitForLink("tap0", 30_000, plugs[2]);
    await h3.configure("tap0", "10.0.0.3/24", "02:00:00:00:00:03");
    assert.ok(await h2.pingable(addresses[2], 10_000), "h2 reaches the restarted h3");
    await eventually("h1 and h2 hear h3 again", othersHear, 5000);

    // Death: dropped after the timeout, with its MACs.
    await plugs[2].stop("SIGKILL");
    await eventually("h1 and h2 drop h3 after it died", noneHears, timeout * 1000 + 5000);
    const learned = (await vxStatus(h2, names[1])).learned.map((entry) => entry.mac);
    assert.ok(!learned.includes("02:00:00:00:00:03"), `h3's MAC forgotten: ${learned}`);

    // Back while something else holds its address and port: it takes an ephemeral port, and the
    // others find it there.
    const holder = h3.vdeno([
      "plug",
      `udp://${h3.address}:14789->${h3.address}:9`,
      "vxvde://239.9.9.9",
    ]);
    await eventually(
      "the port is held",
      async () => (await h3.sh(["ss", "-Hnul", "src", `${h3.address}:14789`])).trim() !== "",
      10_000,
    );
    assert.equal(holder.stderr, "");
    plugs[2] = start(2);
    await plugs[2].waitForOutput((text) => text.includes("another plug listens on"), 20_000);
    await h3.waitForLink("tap0", 30_000, plugs[2]);
    await h3.configure("tap0", "10.0.0.3/24", "02:00:00:00:00:03");
    assert.ok(
      await h2.pingable(addresses[2], 10_000),
      `h2 reaches h3 on its new port: ${JSON.stringify(await vxStatus(h2, names[1]))} ${
        JSON.stringify(await vxStatus(h3, names[2]))
      }`,
    );
    assert.ok(await h1.pingable(addresses[2], 10_000), "h1 reaches h3 on its new port");
    assert.match((await vxStatus(h3, names[2])).listener, /^none/, "h3 is a seed for nobody now");
    await eventually("h1 and h2 hear h3 on a port other than 14789", async () => {
      const status = await vxStatus(h1, names[0]);
      return status.members.some((member) =>
        member.address.startsWith(`${h3.address}:`) && !member.address.endsWith(":14789") &&
        member.lastHeardSeconds !== null
      );
    }, 5000);
  },
);

function makeKeys(count: number): { dir: string; paths: string[] } {
  const dir = Deno.makeTempDirSync({ prefix: "vdeno-peers-" });
  const paths = [];
  for (let i = 0; i < count; i++) {
    const path = `${dir}/k${i}`;
    Deno.writeTextFileSync(path, newKeyText(), { mode: 0o600 });
    paths.push(path);
  }
  return { dir, paths };
}

hostTest(
  "a keyed cloud over peers=: keyless and wrong-key hosts get nothing, not even the member list",
  ["bridge", "ping", "tcpdump"],
  async () => {
    const { dir, paths: [key, otherKey] } = makeKeys(2);
    try {
      await using lan = await Lan.create(4);
      await dropMulticast(lan);
      const [h1, h2, open, wrong] = lan.hosts;
      const base = `vxvde://239.7.0.4/peers=${h1.address}/peertimeout=4`;
      const names = lan.hosts.map((_, i) => `${lan.id}-k${i + 1}`);
      const vnls = [
        `${base}/key='${key}'`,
        `${base}/key='${key}'`,
        base,
        `${base}/key='${otherKey}'`,
      ];
      const plugs = lan.hosts.map((host, i) =>
        host.vdeno(["plug", "-n", names[i], "tap://tap0", vnls[i]])
      );
      const addresses = await overlay(lan.hosts, plugs);
      assert.ok(await h2.pingable(addresses[0]), "keyed h2 pings keyed h1");
      assert.ok(await h1.pingable(addresses[1]), "keyed h1 pings keyed h2");
      // Floods from h1 and h2 (fresh ARP) while the outsiders try too: nothing reaches them.
      for (const outsider of [open, wrong]) {
        const seen = await captureUdp(outsider, "eth0", async () => {
          await h1.sh(["ip", "neigh", "flush", "dev", "tap0"]);
          await h2.sh(["ip", "neigh", "flush", "dev", "tap0"]);
          await h1.run(["ping", "-c", "2", "-W", "1", addresses[1]]);
          const out = await outsider.run(["ping", "-c", "2", "-W", "1", addresses[0]]);
          assert.notEqual(out.code, 0, `${outsider.netns} reached h1`);
          await sleep(1500); // a few rounds of hellos
        });
        const received = seen.filter((d) => ip(addressOf(d.destination)) === ip(outsider.address));
        assert.deepEqual(received, [], `${outsider.netns} received nothing`);
        assert.ok(
          seen.some((d) => ip(addressOf(d.source)) === ip(outsider.address)),
          `the capture saw ${outsider.netns}'s own datagrams: ${JSON.stringify(seen)}`,
        );
      }
      for (const [i, outsider] of [[2, open], [3, wrong]] as const) {
        const status = await vxStatus(outsider, names[i]);
        assert.deepEqual(
          status.members.map((member) => [member.address, member.lastHeardSeconds]),
          [[`${h1.address}:14789`, null]],
          `${outsider.netns} knows its seed only, never heard`,
        );
        assert.equal(status.counters.framesIn, 0);
      }
      for (const [i, host] of [[0, h1], [1, h2]] as const) {
        const members = (await vxStatus(host, names[i])).members.map((member) => member.address);
        assert.ok(
          !members.some((m) =>
            m.startsWith(`${open.address}:`) || m.startsWith(`${wrong.address}:`)
          ),
          `${host.netns} lists no outsider: ${members}`,
        );
      }
      const h1Status = await vxStatus(h1, names[0]);
      assert.ok(h1Status.counters.dropAuthFailed + h1Status.counters.dropWrongHeader > 0);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "a keyed cloud over peers=: a broadcast too long for one datagram reaches every member whole, each copy counted once",
  ["bridge", "ping"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      await dropMulticast(lan);
      // Nothing of the kernel's own on the overlay while the counters are read (no IPv6), and no
      // echo replies to a broadcast ping (the kernel's default): the broadcasts alone move them.
      for (const host of lan.hosts) {
        for (const setting of ["all", "default"]) {
          await host.sh(["sysctl", "-q", "-w", `net.ipv6.conf.${setting}.disable_ipv6=1`]);
        }
      }
      const [h1] = lan.hosts;
      const vnl = `vxvde://239.7.0.5/peers=${h1.address}/key='${key}'`;
      const names = lan.hosts.map((_, i) => `${lan.id}-b${i + 1}`);
      const plugs = lan.hosts.map((host, i) =>
        host.vdeno(["plug", "-n", names[i], "tap://tap0", vnl])
      );
      const addresses = await overlay(lan.hosts, plugs);
      await pingAll(lan.hosts, addresses);
      await sleep(500);
      const before = await Promise.all(lan.hosts.map((host, i) => vxStatus(host, names[i])));
      // 1514-byte frames: two pieces each behind the 44-byte sealed prefix on this underlay.
      await h1.run(["ping", "-b", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1472", "10.0.0.255"]);
      await sleep(500);
      const after = await Promise.all(lan.hosts.map((host, i) => vxStatus(host, names[i])));
      const moved = (i: number, counter: string) =>
        after[i].counters[counter] - before[i].counters[counter];
      assert.equal(moved(0, "framesCut"), 3, "h1 cut each broadcast in pieces");
      assert.equal(moved(0, "sentMulticast"), 3, "each broadcast to the group, once");
      assert.equal(moved(0, "sentUnicast"), 6, "and a copy to each of the two members, once");
      assert.equal(moved(0, "dropSendError"), 0);
      for (const i of [1, 2]) {
        assert.equal(moved(i, "framesIn"), 3, `h${i + 1} received the broadcasts whole`);
        assert.equal(moved(i, "dropIncomplete"), 0);
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

/**
 * Two LANs joined by a router namespace that forwards unicast and routes no
 * multicast. Returns the router's namespace (deleted by `dispose`).
 */
async function route(a: Lan, b: Lan): Promise<{ netns: string; dispose: () => Promise<void> }> {
  const netns = `${a.id}-rt`;
  const dispose = async () => {
    await new Deno.Command("ip", { args: ["netns", "del", netns], stderr: "null" }).output();
  };
  try {
    await sh(["ip", "netns", "add", netns]);
    await sh(["ip", "-n", netns, "link", "set", "lo", "up"]);
    await sh(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (const [i, lan] of [a, b].entries()) {
      const subnet = lan.hosts[0].address.replace(/\.\d+$/, "");
      const port = `rt${i}`;
      await sh([
        ...["ip", "link", "add", "vdnrt", "netns", netns, "type", "veth"],
        ...["peer", "name", port, "netns", `${lan.id}-sw`],
      ]);
      await sh(["ip", "-n", `${lan.id}-sw`, "link", "set", port, "master", "br0", "up"]);
      await sh(["ip", "-n", netns, "link", "set", "vdnrt", "name", `eth${i}`]);
      await sh(["ip", "-n", netns, "addr", "add", `${subnet}.254/24`, "dev", `eth${i}`]);
      await sh(["ip", "-n", netns, "link", "set", `eth${i}`, "up"]);
      for (const host of lan.hosts) {
        await host.sh(["ip", "route", "add", "default", "via", `${subnet}.254`]);
      }
    }
  } catch (error) {
    await dispose();
    throw error;
  }
  return { netns, dispose };
}

hostTest(
  "peers= spans two subnets joined by a router with no multicast routing; inside a subnet the group still serves",
  ["ping", "sysctl"],
  async () => {
    await using lanA = await Lan.create(1);
    await using lanB = await Lan.create(2);
    const router = await route(lanA, lanB);
    try {
      const [a1] = lanA.hosts, [b1, b2] = lanB.hosts;
      const hosts = [a1, b1, b2];
      assert.ok(await b1.pingable(a1.address), "the router forwards unicast");
      const vnl = `vxvde://239.7.0.5/peers=${a1.address}`;
      const names = hosts.map((_, i) => `${lanA.id}-r${i + 1}`);
      const plugs = hosts.map((host, i) => host.vdeno(["plug", "-n", names[i], "tap://tap0", vnl]));
      const addresses = await overlay(hosts, plugs);
      await pingAll(hosts, addresses);
      for (const [from, to] of [[b1, 0], [a1, 2], [b1, 2]] as const) {
        const out = await from.sh(["ping", "-c", "3", "-i", "0.2", addresses[to]]);
        assert.ok(!out.includes("DUP!"), `no duplicates: ${out}`);
      }
      let b1Members: MemberStatus[] = [];
      await eventually("b1 hears b2 through the group", async () => {
        b1Members = (await vxStatus(b1, names[1])).members;
        return b1Members.some((member) =>
          member.address.startsWith(`${b2.address}:`) && member.viaGroup
        );
      }, 5000);
      const viaRouter = b1Members.find((member) => member.address.startsWith(`${a1.address}:`));
      assert.ok(viaRouter && !viaRouter.viaGroup, "and a1 by unicast through the router");
    } finally {
      await router.dispose();
    }
  },
);

hostTest(
  "on a LAN where multicast works, peers= members, a second one on the same host and a vde_plug share one cloud",
  ["vde_plug", "ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [h1, h2, h3] = lan.hosts;
    const vnl = `vxvde://239.7.0.6/peers=${h1.address}`;
    const plugs = [
      h1.vdeno(["plug", "-n", `${lan.id}-m1`, "tap://tap0", vnl]),
      h2.vdeno(["plug", "-n", `${lan.id}-m2`, "tap://tap0", vnl]),
      h3.spawn(["vde_plug", "tap://tap0", "vxvde://239.7.0.6"]),
    ];
    const addresses = await overlay(lan.hosts, plugs);
    await pingAll(lan.hosts, addresses);
    // A second member on h2, in a namespace of its own: h2's listener port is taken.
    const script = [
      "ip addr add 10.0.0.9/24 dev vde0",
      "ip link set vde0 address 02:00:00:00:00:09 up",
      ...addresses.map((address) => `ping -c 3 -i 0.2 -w 10 ${address}`),
    ].join(" && ");
    const second = await h2.run([...VDENO, "ns", vnl, "--", "sh", "-c", script], {
      timeoutMs: 60_000,
    });
    assert.equal(
      second.code,
      0,
      `the second member on h2 pings everyone: ${second.stdout}${second.stderr}`,
    );
    assert.match(second.stderr, /another plug listens on/);
    assert.ok(!second.stdout.includes("DUP!"), `no duplicates: ${second.stdout}`);
    for (const [i, host] of [h1, h2].entries()) {
      const out = await host.sh(["ping", "-c", "3", "-i", "0.2", addresses[2 - i]]);
      assert.ok(!out.includes("DUP!"), `no duplicates: ${out}`);
    }
    await eventually(
      "h1 hears h2 through the group",
      async () =>
        (await vxStatus(h1, `${lan.id}-m1`)).members.some((member) =>
          member.address.startsWith(`${h2.address}:`) && member.viaGroup
        ),
      5000,
    );
  },
);

hostTest(
  "vxlan://.../peers=: a kernel VXLAN device with a static flood list and vdeno ping each other, multicast dropped",
  ["bridge", "ping"],
  async () => {
    await using lan = await Lan.create(3);
    await dropMulticast(lan);
    const [kernel, h2, h3] = lan.hosts;
    await kernel.sh([
      ...["ip", "link", "add", "vx1", "type", "vxlan", "id", "43", "dstport", "4789"],
      ...["dev", "eth0", "local", kernel.address],
    ]);
    for (const other of [h2, h3]) {
      await kernel.sh([
        ...["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx1", "dst", other.address],
      ]);
    }
    await kernel.configure("vx1", "10.0.0.1/24", "02:00:00:00:00:01");
    // h3 names only the kernel, which says no hello: it learns of h2 from h2's hellos to it.
    const vnls = [`peers=${kernel.address},${h3.address}`, `peers=${kernel.address}`].map((peers) =>
      `vxlan:///vni=43/${peers}`
    );
    const names = [h2, h3].map((_, i) => `${lan.id}-x${i + 2}`);
    const plugs = [h2, h3].map((host, i) =>
      host.vdeno(["plug", "-n", names[i], "tap://tap0", vnls[i]])
    );
    for (const [i, host] of [h2, h3].entries()) {
      await host.waitForLink("tap0", 30_000, plugs[i]);
      await host.configure("tap0", `10.0.0.${i + 2}/24`, `02:00:00:00:00:0${i + 2}`);
    }
    for (const [from, to] of [[kernel, "10.0.0.2"], [h2, "10.0.0.1"], [h3, "10.0.0.1"]] as const) {
      assert.ok(await from.pingable(to, 15_000), `${from.netns} pings ${to}`);
    }
    assert.ok(await h3.pingable("10.0.0.2", 15_000), "the vdeno members reach each other");
    const status = await vxlanStatus(h3, names[1]);
    assert.ok(
      status.members.some((member) =>
        member.address === `${h2.address}:4789` && member.lastHeardSeconds !== null
      ),
      `h3 heard h2: ${JSON.stringify(status.members)}`,
    );
    const kernelSeed = status.members.find((member) => member.address === `${kernel.address}:4789`);
    assert.equal(kernelSeed?.lastHeardSeconds, null, "the kernel says no hello");
  },
);

async function vxlanStatus(host: Host, name: string): Promise<VxvdeStatus> {
  const report = JSON.parse(await host.sh([...VDENO, "status", "--json", name]));
  return report.plugs.find((plug: { vnl: string }) => plug.vnl.startsWith("vxlan://"));
}

hostTest(
  "malformed hellos are dropped and counted, and the cloud goes on",
  ["bridge", "ping"],
  async () => {
    await using lan = await Lan.create(3);
    await dropMulticast(lan);
    const [h1, h2, attacker] = lan.hosts;
    const vnl = `vxvde://239.7.0.7/peers=${h1.address}`;
    const names = [h1, h2].map((_, i) => `${lan.id}-j${i + 1}`);
    const plugs = [h1, h2].map((host, i) =>
      host.vdeno(["plug", "-n", names[i], "tap://tap0", vnl])
    );
    const addresses = await overlay([h1, h2], plugs);
    await pingAll([h1, h2], addresses);
    const before = (await vxStatus(h1, names[0])).counters.dropMalformed;
    // Hello headers (VNI 1) with bodies that are not hellos: another version, a count beyond 20,
    // an entry cut short, an unknown family, trailing bytes, and a 9300-byte one.
    const net = new URL("../ffi/net.ts", import.meta.url).href;
    const script = `
      import { sendTo, SocketAddress, udpSocket } from "${net}";
      const to = SocketAddress.parse("${h1.address}", 14789);
      const fd = udpSocket(to.family);
      const header = [0x08, 0, 0x48, 0, 0, 0, 1, 0];
      const bodies = [[2, 0, 0, 0, 0, 1], [1, 21, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1, 4, 0, 5, 10],
        [1, 1, 0, 0, 0, 1, 5, 0, 5, 10, 0, 0, 1], [1, 0, 0, 0, 0, 1, 9], new Array(9300).fill(1)];
      for (let round = 0; round < 50; round++) {
        for (const body of bodies) {
          const datagram = new Uint8Array([...header, ...body]);
          sendTo(fd, datagram, datagram.length, to);
        }
      }`;
    await attacker.sh([Deno.execPath(), "eval", script], 60_000);
    await sleep(500);
    const after = await vxStatus(h1, names[0]);
    assert.ok(
      after.counters.dropMalformed - before >= 300,
      `300 malformed hellos counted: ${after.counters.dropMalformed - before}`,
    );
    assert.ok(
      !after.members.some((member) => member.address.startsWith(`${attacker.address}:`)),
      "the sender of malformed hellos is no member",
    );
    assert.ok(await h2.pingable(addresses[0], 10_000), "the cloud goes on");
  },
);

hostTest(
  "vxlan://.../peers= where multicast works: members tell that the group reaches them, and floods are not doubled",
  ["ping"],
  async () => {
    await using lan = await Lan.create(3);
    const hosts = lan.hosts;
    const names = hosts.map((_, i) => `${lan.id}-w${i + 1}`);
    const vnl = `vxlan://239.7.0.8/vni=44/peers=${hosts[0].address}`;
    const plugs = hosts.map((host, i) => host.vdeno(["plug", "-n", names[i], "tap://tap0", vnl]));
    const addresses = await overlay(hosts, plugs);
    await pingAll(hosts, addresses);
    await eventually("every member says the group reaches it", async () => {
      for (const [i, host] of hosts.entries()) {
        const members = (await vxlanStatus(host, names[i])).members;
        if (members.length !== 2 || !members.every((member) => member.viaGroup)) return false;
      }
      return true;
    }, 20_000);
    for (const host of hosts) await host.sh(["ip", "neigh", "flush", "dev", "tap0"]);
    const out = await hosts[1].sh(["ping", "-c", "3", "-i", "0.2", addresses[2]]);
    assert.ok(!out.includes("DUP!"), `no duplicates: ${out}`);
    const before = (await vxlanStatus(hosts[0], names[0])).counters;
    // Broadcast pings: nobody answers them, so each is one broadcast from hosts[0].
    await hosts[0].run(["ping", "-b", "-c", "3", "-i", "0.2", "10.0.0.255"]);
    const after = (await vxlanStatus(hosts[0], names[0])).counters;
    assert.equal(
      after.sentUnicast - before.sentUnicast,
      0,
      "broadcasts go to the group only once every member hears it there",
    );
    assert.ok(after.sentMulticast > before.sentMulticast);
  },
);
