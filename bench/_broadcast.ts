/**
 * The broadcast workload (`deno task bench --broadcast`): what a broadcast
 * costs a cloud of 8 hosts, on the group where multicast works (vdeno and
 * vde_plug) and over `peers=` where the underlay drops all multicast (vdeno):
 * datagrams on the sender's underlay per broadcast, the share delivered to
 * the 7 receivers, and the sender plug's CPU time. See bench/README.md.
 *
 * @module
 */

import { Lan, type Process, sh } from "../tests/_harness.ts";
import { broadcastCost, type BroadcastResult } from "./_workloads.ts";

/** How the cloud of one run is made. */
export type BroadcastSetup = "vdeno group" | "vdeno peers=" | "vde_plug group";

/** Every setup, in the order of the table. */
export const BROADCAST_SETUPS: readonly BroadcastSetup[] = [
  "vde_plug group",
  "vdeno group",
  "vdeno peers=",
];

const MEMBERS = 8;

/** Turns multicast flooding off on every port of the LAN's bridge: no multicast crosses it. */
async function dropMulticast(lan: Lan): Promise<void> {
  const switchNs = `${lan.id}-sw`;
  const ports = JSON.parse(
    await sh(["ip", "-n", switchNs, "-j", "link", "show", "type", "veth"]),
  ) as { ifname: string }[];
  for (const { ifname } of ports) {
    await sh(["bridge", "-n", switchNs, "link", "set", "dev", ifname, "mcast_flood", "off"]);
  }
}

/** Builds the cloud for `setup` on 8 new hosts and sends `count` broadcasts from the first. */
export async function measureBroadcast(
  setup: BroadcastSetup,
  count: number,
): Promise<BroadcastResult> {
  await using lan = await Lan.create(MEMBERS);
  if (setup === "vdeno peers=") await dropMulticast(lan);
  const vnl = setup === "vdeno peers="
    ? `vxvde://239.8.8.8/peers=${lan.hosts[0].address}`
    : "vxvde://239.8.8.8";
  const plugs: Process[] = lan.hosts.map((host, i) =>
    setup === "vde_plug group"
      ? host.spawn(["vde_plug", "tap://tap0", vnl])
      : host.vdeno(["plug", "--name", `bcast-${lan.id}-${i}`, "tap://tap0", vnl])
  );
  const overlay = (i: number) => `10.0.0.${i + 1}`;
  for (const [i, host] of lan.hosts.entries()) {
    await host.waitForLink("tap0", 60_000, plugs[i]);
    // Only the workload's frames: no IPv6 start-up chatter on the overlay.
    await host.sh(["sysctl", "-qw", "net.ipv6.conf.tap0.disable_ipv6=1"]);
    await host.configure("tap0", `${overlay(i)}/24`, `02:00:00:00:00:${(i + 1).toString(16)}0`);
  }
  const [sender, ...receivers] = lan.hosts;
  // Every member known (peers=) and every path up before the count starts.
  for (let i = 1; i < MEMBERS; i++) {
    if (!(await sender.pingable(overlay(i), 30_000))) {
      throw new Error(`${setup}: the sender does not reach ${overlay(i)}`);
    }
  }
  return await broadcastCost(sender, plugs[0].child.pid, receivers, "10.0.0.255", count);
}

/** The table's rows, with the sender's CPU time as a ratio of vde_plug's. */
export function broadcastTable(results: Map<BroadcastSetup, BroadcastResult>): string[][] {
  const base = results.get("vde_plug group");
  const rows = [[
    "setup (8 members)",
    "datagrams/broadcast",
    "delivered",
    "sender CPU ms/1000",
    "CPU / vde_plug",
  ]];
  for (const [setup, result] of results) {
    rows.push([
      setup,
      result.datagramsPerFrame.toFixed(2),
      `${(result.delivered * 100).toFixed(1)} %`,
      result.cpuMsPerThousand.toFixed(0),
      base ? (result.cpuMsPerThousand / base.cpuMsPerThousand).toFixed(2) : "",
    ]);
  }
  return rows;
}
