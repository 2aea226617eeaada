/**
 * `deno task soak`: a long run of mixed load through vdeno plugs while a peer
 * comes and goes, watching the resident memory and open descriptors of the
 * long-lived plugs. Fails (exit 1) if either keeps growing, if a long-lived
 * plug dies, or if traffic stops. Not a test: it takes minutes (10 by default).
 *
 * Three namespace hosts (app/lab.ts) on vxvde://239.10.0.1: plugs A
 * and B live for the whole run; A sends B alternating iperf3 TCP and UDP and
 * pings B and C; B pings C; C's plug is stopped every --churn seconds
 * (SIGTERM and SIGKILL in turn, so with and without a goodbye) and started
 * again on a new port. Every --sample seconds VmRSS (/proc/PID/status) and
 * the number of entries of /proc/PID/fd of A and B are recorded.
 *
 * Verdict: after a warm-up, the average of the last third of the samples is
 * compared with that of the first third. Memory may rise by 8 MB or 10%
 * (whichever is more), descriptors by 2; beyond that it "keeps growing".
 *
 * @module
 */

import { parseArgs } from "node:util";
import { have, type Host, Lan, type Process, sleep } from "../app/lab.ts";

const USAGE = `Usage: deno task soak [--minutes N] [--sample SECONDS] [--churn SECONDS]

  --minutes N        how long to run (default 10)
  --sample SECONDS   seconds between samples of memory and descriptors (default 5)
  --churn SECONDS    seconds between restarts of the third plug (default 20)

Needs root (network namespaces), iperf3 and ping. Exit 1 if memory or open
descriptors of the long-lived plugs keep growing, or a plug dies.`;

const VNL = "vxvde://239.10.0.1/expiretime=10";
const MAC_C = "02:00:00:00:0c:0c";
/** Bandwidth caps: enough to keep frames flowing without starving two shared cores. */
const TCP_RATE = "200M";
const UDP_RATE = "50M";
const LOAD_SECONDS = 15;
const RSS_MARGIN_KB = 8 * 1024;
const RSS_MARGIN_RATIO = 0.1;
const FD_MARGIN = 2;

interface Sample {
  seconds: number;
  rssA: number;
  fdsA: number;
  rssB: number;
  fdsB: number;
}

interface LoadRun {
  kind: "tcp" | "udp";
  mbps: number;
  lostPercent?: number;
  error?: string;
}

function fail(message: string, code = 2): never {
  console.error(`soak: ${message}`);
  Deno.exit(code);
}

function positive(text: string | undefined, fallback: number, name: string): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) fail(`Bad --${name}: ${JSON.stringify(text)}`);
  return value;
}

/** Resident memory (kB) and open descriptors of a process, or undefined once it is gone. */
function resources(pid: number): { rssKb: number; fds: number } | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
    return { rssKb, fds: [...Deno.readDirSync(`/proc/${pid}/fd`)].length };
  } catch {
    return undefined;
  }
}

/**
 * A plug on tap0 with a fixed MAC: a restarted C comes back with the same MAC,
 * as a rebooted VM does, so the neighbours' ARP caches stay right.
 */
async function tapPlug(host: Host, name: string, cidr: string, mac: string): Promise<Process> {
  const plug = host.vdeno(["plug", "--name", name, "tap://tap0", VNL]);
  await host.waitForLink("tap0");
  await host.configure("tap0", cidr, mac);
  return plug;
}

async function iperf(client: Host, kind: "tcp" | "udp"): Promise<LoadRun> {
  const args = kind === "tcp" ? ["-b", TCP_RATE] : ["-u", "-b", UDP_RATE, "-l", "1200"];
  const result = await client.run(
    [
      "iperf3",
      "-J",
      "-c",
      "10.0.0.2",
      "-t",
      String(LOAD_SECONDS),
      "--connect-timeout",
      "3000",
      ...args,
    ],
    { timeoutMs: (LOAD_SECONDS + 30) * 1000 },
  );
  try {
    const end = JSON.parse(result.stdout).end;
    if (kind === "tcp") return { kind, mbps: end.sum_received.bits_per_second / 1e6 };
    return { kind, mbps: end.sum.bits_per_second / 1e6, lostPercent: end.sum.lost_percent };
  } catch {
    return { kind, mbps: 0, error: result.stderr.trim() || `exit ${result.code}` };
  }
}

function average(values: number[]): number {
  return values.reduce((sum, value) => sum + value, 0) / Math.max(1, values.length);
}

function pingSummary(process: Process): string {
  const match = /(\d+) packets transmitted, (\d+) received/.exec(process.stdout);
  if (!match) return "no summary";
  const [sent, received] = [Number(match[1]), Number(match[2])];
  return `${received}/${sent} (${(100 * (1 - received / Math.max(1, sent))).toFixed(1)}% lost)`;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        minutes: { type: "string" },
        sample: { type: "string" },
        churn: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    fail(`${(error as Error).message}; run with --help for usage`);
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const minutes = positive(values.minutes, 10, "minutes");
  const sampleSeconds = positive(values.sample, 5, "sample");
  const churnSeconds = positive(values.churn, 20, "churn");
  if (Deno.uid() !== 0) fail("needs root: it creates network namespaces");
  for (const program of ["iperf3", "ping", "ip"]) {
    if (!(await have(program))) fail(`${program} is not installed`);
  }

  await using lan = await Lan.create(3);
  const [a, b, c] = lan.hosts;
  let stopping = false;
  const onSignal = () => (stopping = true);
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const plugA = await tapPlug(a, "soak-a", "10.0.0.1/24", "02:00:00:00:0a:0a");
  const plugB = await tapPlug(b, "soak-b", "10.0.0.2/24", "02:00:00:00:0b:0b");
  let third = await tapPlug(c, "soak-c", "10.0.0.3/24", MAC_C);
  if (!(await a.pingable("10.0.0.2")) || !(await a.pingable("10.0.0.3"))) {
    console.error("soak: the overlay does not work at the start");
    return 1;
  }
  const server = b.spawn(["iperf3", "-s", "--forceflush"]);
  await server.waitForOutput((text) => text.includes("listening"));
  const pings = [
    ["A -> B", a.spawn(["ping", "-i", "0.2", "10.0.0.2"])],
    ["A -> C", a.spawn(["ping", "-i", "0.5", "10.0.0.3"])],
    ["B -> C", b.spawn(["ping", "-i", "0.5", "10.0.0.3"])],
  ] as const;

  const started = Date.now();
  const deadline = started + minutes * 60_000;
  const running = () => !stopping && Date.now() < deadline;
  const samples: Sample[] = [];
  const loads: LoadRun[] = [];
  let restarts = 0, recovered = 0;
  let died = "";
  console.error(
    `soak: ${minutes} min; A ${plugA.child.pid}, B ${plugB.child.pid}; sampling every ${sampleSeconds} s; C restarts every ${churnSeconds} s`,
  );

  const sampling = (async () => {
    while (running()) {
      const ra = resources(plugA.child.pid), rb = resources(plugB.child.pid);
      if (!ra || !rb) {
        died = !ra ? "A" : "B";
        stopping = true;
        break;
      }
      const sample = {
        seconds: Math.round((Date.now() - started) / 1000),
        rssA: ra.rssKb,
        fdsA: ra.fds,
        rssB: rb.rssKb,
        fdsB: rb.fds,
      };
      samples.push(sample);
      console.error(
        `  ${sample.seconds}s  A ${sample.rssA} kB ${sample.fdsA} fds  B ${sample.rssB} kB ${sample.fdsB} fds`,
      );
      await sleep(sampleSeconds * 1000);
    }
  })();

  const load = (async () => {
    for (let i = 0; running(); i++) loads.push(await iperf(a, i % 2 ? "udp" : "tcp"));
  })();

  const churn = (async () => {
    while (running()) {
      await sleep(churnSeconds * 1000);
      if (!running()) break;
      await third.stop(restarts % 2 ? "SIGKILL" : "SIGTERM");
      for (let i = 0; i < 100 && (await c.run(["ip", "link", "show", "tap0"])).code === 0; i++) {
        await sleep(100);
      }
      third = await tapPlug(c, `soak-c${++restarts}`, "10.0.0.3/24", MAC_C);
      if (await a.pingable("10.0.0.3", 15_000)) recovered++;
    }
  })();

  await Promise.all([sampling, load, churn]);
  const finalPing = await a.pingable("10.0.0.2", 10_000);
  for (const [, process] of pings) await process.stop("SIGINT");
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);

  // The verdict: skip a warm-up (JIT, buffers), then compare thirds.
  const warmupSeconds = Math.min(60, Math.max(20, (minutes * 60) / 8));
  const settled = samples.filter((sample) => sample.seconds >= warmupSeconds);
  const third1 = settled.slice(0, Math.floor(settled.length / 3));
  const third3 = settled.slice(settled.length - Math.floor(settled.length / 3));
  const verdicts: string[] = [];
  const rows: string[] = [];
  for (const [label, rss, fds] of [["A", "rssA", "fdsA"], ["B", "rssB", "fdsB"]] as const) {
    const rssFirst = average(third1.map((s) => s[rss]));
    const rssLast = average(third3.map((s) => s[rss]));
    const fdsFirst = average(third1.map((s) => s[fds]));
    const fdsLast = average(third3.map((s) => s[fds]));
    const rssAllowed = Math.max(RSS_MARGIN_KB, rssFirst * RSS_MARGIN_RATIO);
    const all = samples.map((s) => s[rss]);
    rows.push(
      `| ${label} | ${Math.min(...all)} | ${Math.max(...all)} | ${rssFirst.toFixed(0)} | ${
        rssLast.toFixed(0)
      } | ${(rssLast - rssFirst).toFixed(0)} | ${fdsFirst.toFixed(1)} | ${fdsLast.toFixed(1)} |`,
    );
    if (rssLast - rssFirst > rssAllowed) {
      verdicts.push(`plug ${label}: VmRSS grew by ${(rssLast - rssFirst).toFixed(0)} kB`);
    }
    if (fdsLast - fdsFirst > FD_MARGIN) {
      verdicts.push(`plug ${label}: open descriptors grew from ${fdsFirst} to ${fdsLast}`);
    }
  }
  if (third1.length < 2) verdicts.push("too few samples after the warm-up: run longer");
  if (died) verdicts.push(`plug ${died} died`);
  if (!finalPing) verdicts.push("A no longer reaches B at the end");
  if (restarts > 0 && recovered === 0) verdicts.push("C was never reachable after a restart");

  const elapsed = (Date.now() - started) / 60_000;
  const tcp = loads.filter((l) => l.kind === "tcp" && !l.error);
  const udp = loads.filter((l) => l.kind === "udp" && !l.error);
  console.log(
    `\n## Soak: ${
      elapsed.toFixed(1)
    } min, ${samples.length} samples every ${sampleSeconds} s, warm-up ${warmupSeconds} s\n`,
  );
  console.log(
    "| plug | VmRSS min kB | VmRSS max kB | first third kB | last third kB | growth kB | fds first | fds last |",
  );
  console.log("| ---- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const row of rows) console.log(row);
  console.log(
    `\nload: ${tcp.length} TCP runs of ${LOAD_SECONDS} s (median ${
      median(tcp.map((l) => l.mbps)).toFixed(0)
    } Mbit/s, cap ${TCP_RATE}), ${udp.length} UDP runs (median ${
      median(udp.map((l) => l.mbps)).toFixed(0)
    } Mbit/s, median loss ${
      median(udp.map((l) => l.lostPercent ?? 0)).toFixed(2)
    }%, cap ${UDP_RATE}), ${loads.filter((l) => l.error).length} failed`,
  );
  console.log(`churn: C restarted ${restarts} times, reachable again ${recovered} times`);
  console.log(`pings: ${pings.map(([label, p]) => `${label} ${pingSummary(p)}`).join("; ")}`);
  console.log("\nsamples (s: A kB/fds, B kB/fds):");
  console.log(
    samples.map((s) => `${s.seconds}: ${s.rssA}/${s.fdsA} ${s.rssB}/${s.fdsB}`).join("; "),
  );
  if (verdicts.length) {
    console.log(`\nFAIL: ${verdicts.join("; ")}`);
    return 1;
  }
  console.log("\nOK: memory and descriptors of the long-lived plugs stay flat");
  return 0;
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)];
}

if (import.meta.main) {
  let code = 1;
  try {
    code = await main();
  } catch (error) {
    console.error(`soak: ${(error as Error).message}`);
  }
  Deno.exit(code);
}
