/**
 * The scale workload: a cloud of many namespace hosts on one bridge, one plug
 * each (vdeno, with some vde_plug members mixed in), every host pinging every
 * other; then each host with many MACs behind its TAP (macvlan interfaces,
 * whose IPv6 start-up frames teach every table their MACs), to see a MAC table
 * fill and collide. Shared by `deno task bench --scale` and tests/scale_test.ts.
 *
 * @module
 */

import { type Host, type Lan, type Process, sh, sleep, VDENO } from "../tests/_harness.ts";
import { cpuSeconds, peakResidentMb } from "./_workloads.ts";

/** Which plug a host runs. */
export type MemberKind = "vdeno" | "vde_plug";

/** One host's plug in a scale cloud. */
export interface Member {
  host: Host;
  kind: MemberKind;
  /** The name of a vdeno plug in `vdeno status`. */
  name: string;
  /** The plug's process id (`ip netns exec` execs it, so the child's pid is the plug's). */
  pid: number;
  /** The host's address on the overlay. */
  overlay: string;
  process: Process;
}

/** A running scale cloud. */
export interface ScaleCloud {
  members: Member[];
  vnl: string;
  stop(): Promise<void>;
}

/** The overlay address of host `index`: 10.0.0.0/16, so hundreds fit. */
function overlayOf(index: number): string {
  return `10.0.${(index + 1) >> 8}.${(index + 1) & 0xff}`;
}

/** The overlay MAC of host `index`. */
function macOf(index: number): string {
  return `02:00:00:00:${hex(index >> 8)}:${hex(index & 0xff)}`;
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, "0");
}

/**
 * Starts one plug per host of `lan` (kinds[i] on host i) on `vnl`, each on
 * `tap0` with its overlay address, and waits until every TAP is up.
 */
export async function startCloud(lan: Lan, kinds: MemberKind[], vnl: string): Promise<ScaleCloud> {
  const members: Member[] = [];
  const stop = async () => {
    for (const member of members) await member.process.stop("SIGTERM");
  };
  try {
    for (const [i, host] of lan.hosts.entries()) {
      const name = `scale-${Deno.pid}-${i}`;
      const process = kinds[i] === "vde_plug"
        ? host.spawn(["vde_plug", "tap://tap0", vnl])
        : host.vdeno(["plug", "--name", name, "tap://tap0", vnl]);
      members.push({
        host,
        kind: kinds[i],
        name,
        pid: process.child.pid,
        overlay: overlayOf(i),
        process,
      });
    }
    for (const [i, member] of members.entries()) {
      await member.host.waitForLink("tap0", 60_000, member.process);
      // No router solicitations or DAD of its own: the tap's frames are the workload's only.
      await member.host.sh(["sysctl", "-qw", "net.ipv6.conf.tap0.disable_ipv6=1"]);
      await member.host.configure("tap0", `${member.overlay}/16`, macOf(i));
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { members, vnl, stop };
}

/** Result of an all-pairs ping. */
export interface MeshResult {
  /** Seconds from the start until every host had an answer from every other. */
  seconds: number;
  /** Pairs that never answered within the time limit (0 when the mesh is full). */
  missingPairs: number;
}

/**
 * Every host pings every other host's overlay address, one target after the
 * other, retrying a target until it answers; all hosts at once. The neighbour
 * tables are flushed first, so ARP is part of it.
 */
export async function allPairsPing(cloud: ScaleCloud, limitSeconds = 120): Promise<MeshResult> {
  for (const member of cloud.members) {
    await member.host.run(["ip", "neigh", "flush", "dev", "tap0"]);
  }
  const started = performance.now();
  const results = await Promise.all(cloud.members.map((member) => {
    const targets = cloud.members.filter((m) => m !== member).map((m) => m.overlay);
    const script = `deadline=$(( $(date +%s) + ${limitSeconds} )); missing=0
for ip in ${targets.join(" ")}; do
  until ping -c 1 -W 1 -q "$ip" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then missing=$((missing + 1)); break; fi
  done
done
echo "$missing"`;
    return member.host.run(["sh", "-c", script], { timeoutMs: (limitSeconds + 30) * 1000 });
  }));
  const seconds = (performance.now() - started) / 1000;
  const missingPairs = results.reduce((sum, result) => sum + (Number(result.stdout) || 0), 0);
  return { seconds, missingPairs };
}

/** What a vdeno plug's vxvde side reports: its counters and how many MACs it holds. */
export interface TableState {
  counters: Record<string, number>;
  liveEntries: number;
  tableSize: number;
}

/** The vxvde side of every vdeno member, by name, from one `vdeno status --json`. */
export async function vxvdeStates(cloud: ScaleCloud): Promise<Map<string, TableState>> {
  const reports = JSON.parse(await sh([...VDENO, "status", "--json"], 60_000)) as {
    name: string;
    plugs: {
      vnl: string;
      counters: Record<string, number>;
      learned?: unknown[];
      tableSize?: number;
    }[];
  }[];
  const states = new Map<string, TableState>();
  for (const member of cloud.members) {
    const report = reports.find((r) => r.name === member.name);
    const vx = report?.plugs.find((plug) => plug.vnl === cloud.vnl);
    if (!vx) continue;
    states.set(member.name, {
      counters: vx.counters,
      liveEntries: vx.learned?.length ?? 0,
      tableSize: vx.tableSize ?? 0,
    });
  }
  return states;
}

/** The sum of counter `name` over every state. */
export function total(states: Map<string, TableState>, name: string): number {
  let sum = 0;
  for (const state of states.values()) sum += state.counters[name] ?? 0;
  return sum;
}

/** CPU seconds per member, read from /proc. */
export function cpuOf(cloud: ScaleCloud, kind: MemberKind): number[] {
  return cloud.members.filter((m) => m.kind === kind).map((m) => cpuSeconds(m.pid));
}

/** Peak resident memory (VmHWM) in MB per member of `kind`. */
export function peakMemoryOf(cloud: ScaleCloud, kind: MemberKind): number[] {
  return cloud.members.filter((m) => m.kind === kind).map((m) => peakResidentMb(m.pid));
}

/**
 * Puts `count` macvlan interfaces on each host's tap0 and brings them up;
 * each one's IPv6 start-up (duplicate address detection, MLD report) sends
 * frames from its own MAC, which every plug of the cloud learns. Resolves once
 * they exist; the frames follow within a second or two.
 */
export async function addMacsBehindTaps(cloud: ScaleCloud, count: number): Promise<void> {
  await Promise.all(cloud.members.map(async (member, h) => {
    const lines: string[] = [];
    for (let m = 0; m < count; m++) {
      lines.push(
        `link add mv${m} link tap0 address 02:01:${hex(h >> 8)}:${hex(h & 0xff)}:${hex(m >> 8)}:${
          hex(m & 0xff)
        } type macvlan mode bridge`,
        `link set mv${m} up`,
      );
    }
    const result = await member.host.run(["ip", "-batch", "-"], {
      stdin: lines.join("\n") + "\n",
      timeoutMs: 120_000,
    });
    if (result.code !== 0) throw new Error(`ip -batch in ${member.host.netns}: ${result.stderr}`);
  }));
}

/** Waits until `condition` holds or `timeoutMs` passes; returns whether it held. */
export async function until(condition: () => Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await sleep(500);
  }
  return false;
}
