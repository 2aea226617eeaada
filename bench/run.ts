/**
 * `deno task bench`: vdeno, vde_plug and the kernel's VXLAN device carry the
 * same workloads between two namespace hosts on a bridge, in turn, for a few
 * rounds; so do `vdeno ns` and vdens between namespaces they make in those
 * hosts. Prints a table of medians with the ratios (vdeno / vde_plug, vdeno /
 * kernel, vdeno-ns / vdens, ...) and writes bench/results/latest.json and
 * latest.svg (a --quick run writes to a new temporary directory unless --out
 * names one). See bench/README.md.
 *
 * Usage: deno run -A bench/run.ts [--rounds N] [--quick] [--only vdeno,vde_plug]
 *        deno run -A bench/run.ts --scale [--hosts N]   (the scale workload only, bench/_scale.ts)
 *
 * `--broadcast` runs the broadcast workload instead (bench/_broadcast.ts): 8
 * members, on the group and over `peers=`; it prints its table only.
 *
 * `--readme` runs nothing: it rewrites the README's table from
 * bench/results/latest.json, as a run that writes there does at its end.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { have, Lan } from "../app/lab.ts";
import {
  type ContenderName,
  CONTENDERS,
  startContender,
  SWITCH_CONTENDERS,
} from "./_contenders.ts";
import { scaleWorkload, setScaleTrace } from "./_scale.ts";
import {
  BROADCAST_SETUPS,
  type BroadcastSetup,
  broadcastTable,
  measureBroadcast,
} from "./_broadcast.ts";
import type { BroadcastResult } from "./_workloads.ts";
import {
  FIGURES,
  type Report,
  type RoundFigures,
  summarize,
  svgChart,
  table,
  withReadmeTable,
} from "./_report.ts";
import {
  allowBigSocketBuffers,
  cpuSeconds,
  type Durations,
  peakResidentMb,
  rtt,
  rttUnderLoad,
  setTrace,
  startIperfServer,
  tcp,
  udpCapacity,
} from "./_workloads.ts";

const USAGE =
  "Usage: deno task bench [--rounds N] [--quick] [--only vdeno,vdeno-sealed,vde_plug,kernel,vdeno-ns,vdens,vdeno-vde,vde_plug-vde,vdeno-vlan,vde_plug-vlan] [--out DIR] [--verbose]\n" +
  "       deno task bench --scale [--hosts N] [--quick] [--out DIR] [--verbose]\n" +
  "       deno task bench --broadcast [--quick] [--verbose]\n" +
  "       deno task bench --readme   (the README's table from bench/results/latest.json)";

const FULL: Durations = {
  tcpSeconds: 5,
  tcpOmitSeconds: 1,
  udpStepSeconds: 2,
  udpSteps: 5,
  idlePings: 500,
  freshPings: 100,
};

const QUICK: Durations = {
  tcpSeconds: 2,
  tcpOmitSeconds: 0,
  udpStepSeconds: 1,
  udpSteps: 2,
  idlePings: 100,
  freshPings: 50,
};

const RESULTS_DIR = new URL("./results", import.meta.url).pathname;

interface Options {
  rounds: number;
  quick: boolean;
  contenders: ContenderName[];
  /** Directory for latest.json and latest.svg. */
  out: string;
  verbose: boolean;
  /** Run the scale workload (bench/_scale.ts) instead, on this many hosts. */
  scaleHosts?: number;
  /** Run the broadcast workload only. */
  broadcast: boolean;
  /** Run nothing: rewrite the README's table from the committed results. */
  readme: boolean;
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      rounds: { type: "string" },
      quick: { type: "boolean" },
      only: { type: "string" },
      out: { type: "string" },
      verbose: { type: "boolean", short: "v" },
      scale: { type: "boolean" },
      hosts: { type: "string" },
      broadcast: { type: "boolean" },
      readme: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const quick = values.quick ?? false;
  const rounds = values.rounds === undefined ? (quick ? 1 : 3) : Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new RangeError(`--rounds wants a whole number of at least 1, not ${values.rounds}`);
  }
  const contenders = values.only === undefined
    ? [...CONTENDERS]
    : values.only.split(",").map((name) => name.trim());
  for (const name of contenders) {
    const known: readonly string[] = [...CONTENDERS, ...SWITCH_CONTENDERS];
    if (!known.includes(name)) {
      throw new RangeError(`--only: unknown contender ${name} (known: ${known.join(", ")})`);
    }
  }
  const hosts = values.hosts === undefined ? 32 : Number(values.hosts);
  if (!Number.isInteger(hosts) || hosts < 2) {
    throw new RangeError(`--hosts wants a whole number of at least 2, not ${values.hosts}`);
  }
  return {
    scaleHosts: values.scale ? hosts : undefined,
    rounds,
    quick,
    contenders: contenders as ContenderName[],
    // Quick figures are rough: they never replace the committed results by default.
    out: values.out ??
      (quick ? Deno.makeTempDirSync({ prefix: "vdeno-bench-quick-" }) : RESULTS_DIR),
    verbose: values.verbose ?? false,
    broadcast: values.broadcast ?? false,
    readme: values.readme ?? false,
  };
}

async function checkPrerequisites(contenders: ContenderName[]): Promise<void> {
  if (Deno.uid() !== 0) throw new Error("The benchmark needs root: it creates network namespaces");
  const programs = [
    "ip",
    "iperf3",
    "ping",
    ...(contenders.some((name) => name.startsWith("vde_plug")) ? ["vde_plug"] : []),
    ...(contenders.some((name) => name.endsWith("-vde")) ? ["vde_switch"] : []),
    ...(contenders.includes("vdens") ? ["vdens"] : []),
    ...(contenders.some((name) => name === "vdeno-ns" || name === "vdens") ? ["nsenter"] : []),
  ];
  for (const program of programs) {
    if (!(await have(program))) {
      throw new Error(`The benchmark needs ${program}: it is not installed`);
    }
  }
}

/**
 * Runs every workload over one contender set up on the LAN's two hosts (in the
 * namespaces it made there, for vdeno-ns and vdens).
 */
async function measure(lan: Lan, name: ContenderName, d: Durations): Promise<RoundFigures> {
  const contender = await startContender(name, lan.hosts);
  const [client] = contender.hosts;
  try {
    const figures: RoundFigures = {};
    const fresh = await rtt(client, d.freshPings);
    figures.rtt_fresh_p50 = fresh.p50;
    figures.rtt_fresh_p99 = fresh.p99;

    const cpuBefore = contender.pids.map(cpuSeconds);
    const loaded = await rttUnderLoad(client, d);
    figures.rtt_load_p50 = loaded.rtt.p50;
    figures.rtt_load_p99 = loaded.rtt.p99;
    figures.tcp1_mbps = loaded.load.mbps;
    figures.tcp1_retransmits = loaded.load.retransmits;
    const four = await tcp(client, 4, d);
    figures.tcp4_mbps = four.mbps;
    figures.tcp4_retransmits = four.retransmits;
    if (contender.pids.length > 0) {
      const cpuUsed = contender.pids.reduce(
        (sum, pid, i) => sum + cpuSeconds(pid) - cpuBefore[i],
        0,
      );
      figures.cpu_s_per_gb = cpuUsed / ((loaded.load.bytes + four.bytes) / 1e9);
    }

    for (const payload of [64, 1400]) {
      const capacity = await udpCapacity(client, payload, d);
      figures[`udp${payload}_fps`] = capacity.framesPerSecond;
      figures[`udp${payload}_mbps`] = capacity.mbps;
    }
    // At no load means a plug that has been running, as a plug in service has:
    // after the workloads, once their queues have drained.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const idle = await rtt(client, d.idlePings);
    figures.rtt_idle_p50 = idle.p50;
    figures.rtt_idle_p99 = idle.p99;
    if (contender.pids.length > 0) {
      figures.rss_peak_mb = Math.max(...contender.pids.map(peakResidentMb));
    }
    return figures;
  } finally {
    await contender.stop();
  }
}

function machine(): Report["machine"] {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return {
    cpus: navigator.hardwareConcurrency,
    model: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    loadavgBefore: Deno.loadavg(),
    loadavgAfter: [],
  };
}

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(Deno.args);
    if (options.readme) return await rewriteReadme();
    await checkPrerequisites(options.contenders);
  } catch (error) {
    console.error(`bench: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (options.scaleHosts !== undefined) return await runScale(options, options.scaleHosts);
  const durations = options.quick ? QUICK : FULL;
  if (options.verbose) setTrace((line) => console.error(`    ${line}`));
  if (options.broadcast) return await broadcastMain(options);
  const about = machine();
  const started = new Date();
  const rounds = new Map<ContenderName, RoundFigures[]>(options.contenders.map((n) => [n, []]));
  const ran = await onBenchLan(2, async (lan) => {
    for (const host of lan.hosts) await allowBigSocketBuffers(host);
    await startIperfServer(lan.hosts[1]);
    for (let round = 0; round < options.rounds; round++) {
      // Rotate the order each round so no contender always runs first on a warming machine.
      const order = options.contenders.map((_, i) =>
        options.contenders[(i + round) % options.contenders.length]
      );
      for (const name of order) {
        console.error(`round ${round + 1}/${options.rounds}: ${name}...`);
        const figures = await measure(lan, name, durations);
        rounds.get(name)!.push(figures);
        console.error(
          `  TCP ${figures.tcp1_mbps.toFixed(0)} / ${figures.tcp4_mbps.toFixed(0)} Mbit/s, ` +
            `UDP64 ${figures.udp64_fps.toFixed(0)} frames/s, RTT p50 ${figures.rtt_idle_p50} ms`,
        );
      }
    }
    return true;
  });
  if (ran === undefined) return 1;
  about.loadavgAfter = Deno.loadavg();
  const report: Report = {
    date: started.toISOString(),
    machine: about,
    options: { rounds: options.rounds, quick: options.quick, contenders: options.contenders },
    figures: FIGURES,
    ...summarize(rounds),
    notes: [
      "TAP MTU 1500 for vdeno and vde_plug: a full frame + 16 bytes vxvde/UDP + 20 IP exceeds the underlay's 1500 and is fragmented",
      "kernel: vx0 keeps the MTU the kernel gives it (1450), so it is not fragmented; cost figures do not apply (no process); its UDP capacity is usually the iperf3 sender's limit",
      "UDP capacity: iperf3 -w 4M so that loss is counted in the overlay, not at a late receiver",
      "RTT under load is measured during the TCP 1 stream test; CPU per GB over both TCP tests, both hosts' plugs",
      "vdeno-ns and vdens: the workloads run in the namespaces they made (vde0, MTU 1500), entered with nsenter --net; cost figures are the vdeno ns and vdens processes, which run the data plane",
    ],
  };
  try {
    await Deno.mkdir(options.out, { recursive: true });
    await Deno.writeTextFile(`${options.out}/latest.json`, JSON.stringify(report, null, 2) + "\n");
    await Deno.writeTextFile(`${options.out}/latest.svg`, svgChart(report));
    const files = [`${options.out}/latest.json`, `${options.out}/latest.svg`];
    // Committed results must pass `deno task check`: let deno fmt lay them out.
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", ...files] }).output();
    // The README's table shows the committed results: it is rewritten with them.
    if (options.out === RESULTS_DIR) await writeReadmeTable(report);
  } catch (error) {
    console.error(`bench: cannot write the results to ${options.out}: ${(error as Error).message}`);
    return 1;
  }
  console.log(
    `${report.date}, ${about.cpus} CPUs (${about.model}), load ${
      about.loadavgBefore.map((l) => l.toFixed(2)).join(" ")
    } -> ${about.loadavgAfter.map((l) => l.toFixed(2)).join(" ")}, ${options.rounds} round(s)${
      options.quick ? ", quick" : ""
    }`,
  );
  console.log(table(report));
  if (options.quick) {
    console.log(
      "Quick figures are rough (1 round, short durations): for development only; " +
        "run deno task bench for figures to compare or publish",
    );
  }
  console.log(`Results written to ${options.out}`);
  return 0;
}

const README = new URL("../README.md", import.meta.url).pathname;

/** Rewrites the README's table from `report`, laid out by deno fmt. */
async function writeReadmeTable(report: Report): Promise<void> {
  await Deno.writeTextFile(README, withReadmeTable(await Deno.readTextFile(README), report));
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", README] }).output();
}

/** `--readme`: the README's table from bench/results/latest.json; nothing runs. */
async function rewriteReadme(): Promise<number> {
  try {
    const report: Report = JSON.parse(await Deno.readTextFile(`${RESULTS_DIR}/latest.json`));
    await writeReadmeTable(report);
  } catch (error) {
    console.error(`bench: cannot rewrite the README's table: ${(error as Error).message}`);
    return 1;
  }
  console.log(
    `${README}: table rewritten from ${RESULTS_DIR}/latest.json (${
      (JSON.parse(await Deno.readTextFile(`${RESULTS_DIR}/latest.json`)) as Report).date
    })`,
  );
  return 0;
}

/**
 * Runs `work` on a namespace LAN of `hosts` hosts, removed afterwards and on Ctrl-C. A LAN that
 * cannot be built or work that fails is one line on stderr, and undefined.
 */
async function onBenchLan<T>(
  hosts: number,
  work: (lan: Lan) => Promise<T>,
): Promise<T | undefined> {
  let lan: Lan;
  try {
    lan = await Lan.create(hosts);
  } catch (error) {
    console.error(`bench: cannot build the namespace LAN: ${(error as Error).message}`);
    return undefined;
  }
  const onInterrupt = async () => {
    console.error("\nbench: interrupted, removing the namespaces");
    await lan.dispose();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    return await work(lan);
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    return undefined;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
    await lan.dispose();
  }
}

/** `--scale`: the scale workload alone; prints its figures and writes scale.json. */
async function runScale(options: Options, hosts: number): Promise<number> {
  for (const program of ["ping", "vde_plug"]) {
    if (!(await have(program))) {
      console.error(`bench: the scale workload needs ${program}: it is not installed`);
      return 2;
    }
  }
  if (options.verbose) setScaleTrace((line) => console.error(`    ${line}`));
  const about = machine();
  const started = new Date();
  const figures = await onBenchLan(hosts, (lan) =>
    scaleWorkload(lan, {
      hosts,
      vdePlugEvery: 4,
      macsPerHost: 100,
      idleSeconds: options.quick ? 10 : 60,
      hashSizes: [1024, 8192],
    }));
  if (figures === undefined) return 1;
  about.loadavgAfter = Deno.loadavg();
  const report = { date: started.toISOString(), machine: about, figures };
  await Deno.mkdir(options.out, { recursive: true });
  const file = `${options.out}/scale.json`;
  await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", file] }).output();
  console.log(
    `${report.date}, ${about.cpus} CPUs (${about.model}), load ${
      about.loadavgBefore.map((l) => l.toFixed(2)).join(" ")
    } -> ${about.loadavgAfter.map((l) => l.toFixed(2)).join(" ")}`,
  );
  for (const [name, value] of Object.entries(figures)) {
    console.log(`${name.padEnd(44)} ${Number.isInteger(value) ? value : value.toFixed(3)}`);
  }
  return 0;
}

/** `--broadcast`: each setup in turn, `rounds` times, medians of each figure. */
async function broadcastMain(options: Options): Promise<number> {
  const count = options.quick ? 1000 : 5000;
  const results = new Map<BroadcastSetup, BroadcastResult>();
  try {
    for (const setup of BROADCAST_SETUPS) {
      const rounds: BroadcastResult[] = [];
      for (let round = 0; round < options.rounds; round++) {
        console.error(`round ${round + 1}/${options.rounds}: ${setup}...`);
        rounds.push(await measureBroadcast(setup, count));
      }
      const median = (pick: (r: BroadcastResult) => number) =>
        rounds.map(pick).sort((a, b) => a - b)[Math.floor(rounds.length / 2)];
      results.set(setup, {
        frames: count,
        datagramsPerFrame: median((r) => r.datagramsPerFrame),
        delivered: median((r) => r.delivered),
        cpuMsPerThousand: median((r) => r.cpuMsPerThousand),
      });
    }
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    return 1;
  }
  console.log(
    `${
      new Date().toISOString()
    }, ${count} broadcasts of 242 bytes at 500/s, ${options.rounds} round(s)`,
  );
  const rows = broadcastTable(results);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  for (const row of rows) console.log(row.map((cell, c) => cell.padEnd(widths[c])).join("  "));
  return 0;
}

if (import.meta.main) Deno.exit(await main());
