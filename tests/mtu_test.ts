/**
 * The README's MTU table (Troubleshooting), read from README.md: on a
 * 1500-byte underlay, each TAP MTU it gives (IPv4 and IPv6, open and keyed)
 * is the largest whose full-size frames cross in one datagram; one byte more
 * and they still arrive, as IP fragments on an open network (as vde_plug
 * sends them), in pieces of their own (plugs/seal.ts) and never as IP
 * fragments on a keyed one, up to the longest frame vdeno takes.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, sleep, VDENO } from "./_harness.ts";
import { newKeyText } from "../plugs/seal.ts";

/** The largest TAP MTU vdeno carries (core/frames.ts MAX_FRAME, less the Ethernet and VLAN headers). */
const JUMBO_MTU = 9216;

/** The MTU table of the README's Troubleshooting section: underlay, open and keyed. */
function readmeTable(): { underlay: string; keyed: boolean; mtu: number }[] {
  const readme = Deno.readTextFileSync(new URL("../README.md", import.meta.url));
  const section = readme.slice(readme.indexOf("### MTU"));
  const rows = [...section.matchAll(/^\| (IPv4|IPv6) +\| +(\d+) \| +(\d+) \|$/gm)];
  assert.equal(rows.length, 2, "README.md's MTU table has an IPv4 and an IPv6 row");
  return rows.flatMap(([, underlay, open, keyed]) => [
    { underlay, keyed: false, mtu: Number(open) },
    { underlay, keyed: true, mtu: Number(keyed) },
  ]);
}

/** Runs `action` while tcpdump counts IP fragments arriving on `host`'s eth0. */
async function countFragments(host: Host, v6: boolean, action: () => Promise<void>) {
  const filter = v6 ? "ip6 and ip6[6] == 44" : "ip and (ip[6:2] & 0x3fff) != 0";
  const tcpdump = host.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", "-q", filter]);
  await tcpdump.waitForOutput((text) => text.includes("listening on"));
  await action();
  await sleep(500);
  await tcpdump.stop("SIGINT");
  return tcpdump.stdout.split("\n").filter((line) => /\bIP6? /.test(line)).length;
}

/** How many frames the network plug of `name` on `host` sent in pieces. */
async function framesCut(host: Host, name: string): Promise<number> {
  const status = JSON.parse(await host.sh([...VDENO, "status", "--json", name]));
  return status.plugs[1].counters.framesCut;
}

hostTest(
  "a TAP MTU from the README's table crosses in one datagram; one byte more fragments, or goes in pieces keyed, up to the longest frame",
  ["ping", "tcpdump"],
  async () => {
    const keyFile = await Deno.makeTempFile({ prefix: "vdeno-mtu-key-" });
    try {
      await Deno.writeTextFile(keyFile, newKeyText(), { mode: 0o600 });
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      for (const [index, { underlay, keyed, mtu }] of readmeTable().entries()) {
        const v6 = underlay === "IPv6";
        const group = v6 ? `ff05:56de::${index + 20}` : `239.8.2.${index + 1}`;
        const vnl = `vxvde://${group}${keyed ? `/key='${keyFile}'` : ""}`;
        const tap = `tap${index}`;
        const what = `${underlay}${keyed ? ", keyed" : ""}`;
        // Plug names are the machine's, not a namespace's: one of its own for each.
        const name = `mtu${index}-${Deno.pid}-`;
        const plugs = [a, b].map((host, i) =>
          host.vdeno(["plug", "--name", `${name}${i}`, `tap://${tap}`, vnl])
        );
        for (const [i, host] of [a, b].entries()) {
          await host.waitForLink(tap, 30_000, plugs[i]);
          await host.sh(["ip", "link", "set", tap, "mtu", String(mtu)]);
          await host.configure(tap, `10.9.${index}.${i + 1}/24`);
        }
        const peer = `10.9.${index}.2`;
        assert.ok(await a.pingable(peer), `${what}: the plugs do not carry small pings`);
        // Don't fragment in the overlay: the ICMP packet is exactly the TAP's MTU.
        const ping = (size: number) => async () => {
          const result = await a.run(["ping", "-M", "do", "-c", "3", "-s", String(size), peer]);
          assert.equal(result.code, 0, `${what}: ping -s ${size}: ${result.stdout}`);
        };
        const whole = await countFragments(b, v6, ping(mtu - 28));
        assert.equal(whole, 0, `${what}: TAP MTU ${mtu}: full frames were fragmented`);
        for (const host of [a, b]) {
          await host.sh(["ip", "link", "set", tap, "mtu", String(mtu + 1)]);
        }
        const cutBefore = await framesCut(a, `${name}0`);
        const over = await countFragments(b, v6, ping(mtu + 1 - 28));
        if (keyed) {
          assert.equal(over, 0, `${what}: TAP MTU ${mtu + 1}: IP fragments on a keyed network`);
          const cut = await framesCut(a, `${name}0`) - cutBefore;
          assert.ok(cut >= 3, `${what}: TAP MTU ${mtu + 1}: ${cut} frames sent in pieces`);
          // The longest frame vdeno takes, in seven pieces on this underlay, all in its slot.
          for (const host of [a, b]) {
            await host.sh(["ip", "link", "set", tap, "mtu", String(JUMBO_MTU)]);
          }
          const jumbo = await countFragments(b, v6, ping(JUMBO_MTU - 28));
          assert.equal(jumbo, 0, `${what}: TAP MTU ${JUMBO_MTU}: IP fragments on a keyed network`);
        } else {
          assert.ok(over >= 3, `${what}: TAP MTU ${mtu + 1}: ${over} fragments, expected some`);
        }
        for (const plug of plugs) await plug.stop();
      }
    } finally {
      await Deno.remove(keyFile);
    }
  },
);
