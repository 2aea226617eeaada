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
        // No ARP: the host's own address must be answered by tap0 alone, not by 100 MACs.
        `link set mv${m} arp off up`,
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

/** Sizes and durations of the scale workload. */
export interface ScaleOptions {
  hosts: number;
  /** Every Nth host runs vde_plug instead of vdeno (0: none). */
  vdePlugEvery: number;
  macsPerHost: number;
  idleSeconds: number;
  /** hashsize= values for the runs with MACs behind the TAPs. */
  hashSizes: number[];
}

/** The figures of one scale run, by name; see bench/README.md. */
export type ScaleFigures = Record<string, number>;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.floor(sorted.length / 2)];
}

function percentOfCore(before: number[], after: number[], seconds: number): number[] {
  return after.map((value, i) => (100 * (value - before[i])) / seconds);
}

let trace: (line: string) => void = () => {};

/** Sets where each step of the scale workload is described. */
export function setScaleTrace(writer: (line: string) => void): void {
  trace = writer;
}

/**
 * `idle` vdeno plugs in one host (one namespace), each on a TAP of its own on
 * one group, doing nothing: their CPU over `seconds`, in % of one core, all
 * together.
 */
export async function idleCost(lan: Lan, plugs: number, seconds: number): Promise<number> {
  const [host] = lan.hosts;
  const processes = [];
  try {
    for (let i = 0; i < plugs; i++) {
      processes.push(host.vdeno([
        "plug",
        "--name",
        `idle-${Deno.pid}-${i}`,
        `tap://idle${i}`,
        "vxvde://239.4.14.2",
      ]));
    }
    for (let i = 0; i < plugs; i++) await host.waitForLink(`idle${i}`, 60_000, processes[i]);
    await sleep(5000); // past start-up: the restart with signals blocked, the first compilations
    const pids = processes.map((p) => p.child.pid);
    const before = pids.map(cpuSeconds);
    const started = performance.now();
    await sleep(seconds * 1000);
    const elapsed = (performance.now() - started) / 1000;
    return percentOfCore(before, pids.map(cpuSeconds), elapsed).reduce((a, b) => a + b, 0);
  } finally {
    for (const process of processes) await process.stop("SIGTERM");
  }
}

/** Runs the whole scale workload on `lan` (one host per member); returns its figures. */
export async function scaleWorkload(lan: Lan, options: ScaleOptions): Promise<ScaleFigures> {
  const figures: ScaleFigures = {};
  const kinds: MemberKind[] = lan.hosts.map((_, i) =>
    options.vdePlugEvery > 0 && i % options.vdePlugEvery === options.vdePlugEvery - 1
      ? "vde_plug"
      : "vdeno"
  );
  figures.hosts = kinds.length;
  figures.vdeno_members = kinds.filter((k) => k === "vdeno").length;
  figures.vde_plug_members = kinds.length - figures.vdeno_members;

  trace(`idle cost of ${options.hosts} vdeno plugs in one host, ${options.idleSeconds} s`);
  figures.idle_plugs_one_host_cpu_pct = await idleCost(lan, options.hosts, options.idleSeconds);

  for (const [run, hashSize] of [1024, ...options.hashSizes].entries()) {
    const withMacs = run > 0;
    const prefix = withMacs ? `macs_h${hashSize}_` : "";
    const vnl = `vxvde://239.4.14.1/hashsize=${hashSize}`;
    trace(`${kinds.length} hosts on ${vnl}`);
    const cloud = await startCloud(lan, kinds, vnl);
    try {
      if (!withMacs) {
        await sleep(3000);
        const idleBefore = { vdeno: cpuOf(cloud, "vdeno"), vde_plug: cpuOf(cloud, "vde_plug") };
        let started = performance.now();
        await sleep(options.idleSeconds * 1000);
        let elapsed = (performance.now() - started) / 1000;
        for (const kind of ["vdeno", "vde_plug"] as const) {
          const pct = percentOfCore(idleBefore[kind], cpuOf(cloud, kind), elapsed);
          figures[`idle_${kind}_cloud_cpu_pct_total`] = pct.reduce((a, b) => a + b, 0);
        }
        trace("all-pairs ping");
        const statesBefore = await vxvdeStates(cloud);
        const cpuBefore = { vdeno: cpuOf(cloud, "vdeno"), vde_plug: cpuOf(cloud, "vde_plug") };
        started = performance.now();
        const mesh = await allPairsPing(cloud);
        elapsed = (performance.now() - started) / 1000;
        for (const kind of ["vdeno", "vde_plug"] as const) {
          const pct = percentOfCore(cpuBefore[kind], cpuOf(cloud, kind), elapsed);
          figures[`mesh_${kind}_cpu_pct_median`] = median(pct);
          figures[`mesh_${kind}_cpu_pct_max`] = Math.max(...pct);
        }
        const statesAfter = await vxvdeStates(cloud);
        figures.mesh_seconds = mesh.seconds;
        figures.mesh_missing_pairs = mesh.missingPairs;
        figures.mesh_sent_to_group = total(statesAfter, "sentMulticast") -
          total(statesBefore, "sentMulticast");
        figures.mesh_sent_unicast = total(statesAfter, "sentUnicast") -
          total(statesBefore, "sentUnicast");
        for (const kind of ["vdeno", "vde_plug"] as const) {
          const peaks = peakMemoryOf(cloud, kind);
          figures[`peak_rss_${kind}_mb_median`] = median(peaks);
          figures[`peak_rss_${kind}_mb_max`] = Math.max(...peaks);
        }
        continue;
      }
      trace(`${options.macsPerHost} MACs behind each TAP, hashsize=${hashSize}`);
      const expected = kinds.length * (options.macsPerHost + 1);
      const started = performance.now();
      await addMacsBehindTaps(cloud, options.macsPerHost);
      // Until the counts stop moving: every MAC's start-up frames have gone by.
      let previous = -1, states = await vxvdeStates(cloud);
      for (let i = 0; i < 60; i++) {
        await sleep(2000);
        states = await vxvdeStates(cloud);
        const learned = total(states, "learned");
        if (learned === previous) break;
        previous = learned;
      }
      figures[`${prefix}settle_seconds`] = (performance.now() - started) / 1000;
      const live = [...states.values()].map((s) => s.liveEntries);
      figures[`${prefix}macs_on_cloud`] = expected;
      figures[`${prefix}table_slots`] = [...states.values()][0]?.tableSize ?? 0;
      figures[`${prefix}live_entries_median`] = median(live);
      figures[`${prefix}live_entries_min`] = Math.min(...live);
      figures[`${prefix}evictions_per_plug_median`] = median(
        [...states.values()].map((s) => s.counters.tableEvictions),
      );
      trace("all-pairs ping with the tables full");
      const mesh = await allPairsPing(cloud);
      const after = await vxvdeStates(cloud);
      figures[`${prefix}mesh_seconds`] = mesh.seconds;
      figures[`${prefix}mesh_missing_pairs`] = mesh.missingPairs;
      figures[`${prefix}mesh_sent_to_group`] = total(after, "sentMulticast") -
        total(states, "sentMulticast");
      figures[`${prefix}mesh_sent_unicast`] = total(after, "sentUnicast") -
        total(states, "sentUnicast");
      const peaks = peakMemoryOf(cloud, "vdeno");
      figures[`${prefix}peak_rss_vdeno_mb_max`] = Math.max(...peaks);
    } finally {
      await cloud.stop();
      // The TAPs (and the macvlans on them) go with their plugs.
      for (const member of cloud.members) {
        const deadline = Date.now() + 15_000;
        while ((await member.host.run(["ip", "link", "show", "tap0"])).code === 0) {
          if (Date.now() > deadline) break;
          await sleep(100);
        }
      }
    }
  }
  trace(`${kinds.length} hosts, every one vde_plug: the same all-pairs ping, for the ratio`);
  const reference = await startCloud(lan, kinds.map(() => "vde_plug"), "vxvde://239.4.14.3");
  try {
    await sleep(3000);
    const mesh = await allPairsPing(reference);
    figures.mesh_all_vde_plug_seconds = mesh.seconds;
    figures.mesh_all_vde_plug_missing_pairs = mesh.missingPairs;
  } finally {
    await reference.stop();
  }
  return figures;
}
