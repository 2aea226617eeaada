/**
 * The workloads of the benchmark, each run between two hosts that already
 * share an overlay (10.0.0.1 -> 10.0.0.2): iperf3 TCP, a UDP forwarding
 * capacity search, ping RTT percentiles, and the CPU and memory of the plug
 * processes read from /proc.
 *
 * @module
 */

import type { Host } from "../app/lab.ts";
import { sleep } from "../app/lab.ts";

/** Durations and sample counts of one run of the workloads. */
export interface Durations {
  /** Seconds per iperf3 TCP test (after the omitted first second). */
  tcpSeconds: number;
  /** Seconds iperf3 TCP skips at the start (slow start), 0 for none. */
  tcpOmitSeconds: number;
  /** Seconds per offered rate in the UDP search. */
  udpStepSeconds: number;
  /** Offered rates tried after the unlimited probe. */
  udpSteps: number;
  /** Pings at no load (one every 10 ms). */
  idlePings: number;
  /** Pings right after the plugs start: how a fresh plug does while its code warms up. */
  freshPings: number;
}

/** Result of one iperf3 TCP test. */
export interface TcpResult {
  mbps: number;
  retransmits: number;
  bytes: number;
}

/** The best rate of a UDP search that arrived with under 1% loss. */
export interface CapacityResult {
  framesPerSecond: number;
  mbps: number;
}

/** RTT percentiles in milliseconds. */
export interface RttResult {
  p50: number;
  p99: number;
}

const SERVER = "10.0.0.2";
const UDP_SOCKET_BUFFER = "4M";

/** Lets iperf3 ask for its 4 MB UDP socket buffers in `host` (the caps are per namespace). */
export async function allowBigSocketBuffers(host: Host): Promise<void> {
  await host.sh(["sysctl", "-qw", "net.core.rmem_max=8388608", "net.core.wmem_max=8388608"]);
}

let trace: (line: string) => void = () => {};

/** Sets where each step of a workload is described (for --verbose). */
export function setTrace(writer: (line: string) => void): void {
  trace = writer;
}

/** Starts an iperf3 server in `host`; it lives until the LAN is disposed. */
export async function startIperfServer(host: Host): Promise<void> {
  const server = host.spawn(["iperf3", "-s", "--forceflush"]);
  await server.waitForOutput((text) => text.includes("listening"), 10_000);
}

interface IperfJson {
  error?: string;
  end?: {
    sum_sent?: { bytes: number; bits_per_second: number; retransmits?: number };
    sum_received?: { bytes: number; bits_per_second: number };
    sum?: {
      seconds: number;
      bytes: number;
      packets: number;
      lost_packets: number;
      lost_percent: number;
    };
  };
}

/**
 * Runs the iperf3 client until its JSON has the summary `complete` wants (3 tries): the server
 * accepts one test at a time, so a try can fail while the last one is still closing.
 */
async function iperf(
  client: Host,
  args: string[],
  seconds: number,
  complete: (end: NonNullable<IperfJson["end"]>) => boolean,
): Promise<NonNullable<IperfJson["end"]>> {
  for (let attempt = 0;; attempt++) {
    const result = await client.run(
      ["iperf3", "-J", "-c", SERVER, "--connect-timeout", "3000", ...args],
      { timeoutMs: (seconds + 20) * 1000 },
    );
    let parsed: IperfJson = {};
    try {
      parsed = JSON.parse(result.stdout);
    } catch { /* reported below */ }
    if (result.code === 0 && parsed.end && complete(parsed.end)) return parsed.end;
    const why = parsed.error ?? (result.stderr.trim() ||
      (result.code === 0
        ? `no summary in its JSON (end: ${JSON.stringify(parsed.end)?.slice(0, 300)})`
        : `exit ${result.code}`));
    trace(`iperf3 ${args.join(" ")}: ${why}`);
    if (attempt >= 2) throw new Error(`iperf3 ${args.join(" ")} failed: ${why}`);
    await sleep(1000);
  }
}

/** iperf3 TCP from `client` to the server with `streams` parallel streams. */
export async function tcp(client: Host, streams: number, d: Durations): Promise<TcpResult> {
  const seconds = d.tcpSeconds + d.tcpOmitSeconds;
  const end = await iperf(
    client,
    [
      "-t",
      String(d.tcpSeconds),
      "-O",
      String(d.tcpOmitSeconds),
      "-P",
      String(streams),
    ],
    seconds,
    (end) => end.sum_sent !== undefined && end.sum_received !== undefined,
  );
  const sent = end.sum_sent!;
  const received = end.sum_received!;
  trace(`TCP ${streams}: ${(received.bits_per_second / 1e6).toFixed(0)} Mbit/s`);
  return {
    mbps: received.bits_per_second / 1e6,
    retransmits: sent.retransmits ?? 0,
    bytes: received.bytes,
  };
}

interface UdpStep {
  offeredBps: number;
  receivedPps: number;
  lostPercent: number;
}

async function udpStep(
  client: Host,
  payload: number,
  offeredBps: number,
  seconds: number,
): Promise<UdpStep> {
  const end = await iperf(
    client,
    [
      "-u",
      "-l",
      String(payload),
      "-b",
      String(Math.round(offeredBps)),
      // Big endpoint buffers, so that loss measures the overlay, not a late iperf3 receiver.
      "-w",
      UDP_SOCKET_BUFFER,
      "-t",
      String(seconds),
    ],
    seconds,
    (end) => end.sum !== undefined,
  );
  const sum = end.sum!;
  const sentPps = sum.packets / sum.seconds;
  trace(
    `UDP ${payload} B offered ${offeredBps > 0 ? (offeredBps / 1e6).toFixed(1) : "unlimited"} ` +
      `Mbit/s: sent ${sentPps.toFixed(0)}/s, lost ${sum.lost_percent.toFixed(2)}%`,
  );
  return {
    // Unlimited (-b 0) reports what the sender managed to offer.
    offeredBps: offeredBps > 0 ? offeredBps : sentPps * payload * 8,
    receivedPps: (sum.packets - sum.lost_packets) / sum.seconds,
    lostPercent: sum.lost_percent,
  };
}

/**
 * The highest offered UDP rate that arrives with under 1% loss. An unlimited
 * probe first: if it passes, the sender was the limit. Otherwise its received
 * rate is the first guess, then bisection between the best pass and the
 * lowest failure; past the planned steps, halving goes on (a few times at
 * most) until one rate passes.
 */
export async function udpCapacity(
  client: Host,
  payload: number,
  d: Durations,
): Promise<CapacityResult> {
  const probe = await udpStep(client, payload, 0, d.udpStepSeconds);
  let best: UdpStep | undefined = probe.lostPercent < 1 ? probe : undefined;
  let low = 0;
  let high = probe.offeredBps;
  let guess = Math.min(high, probe.receivedPps * payload * 8);
  for (let step = 0; !best || (best !== probe && step < d.udpSteps); step++) {
    if (step >= d.udpSteps + 4) break;
    const result = await udpStep(client, payload, guess, d.udpStepSeconds);
    if (result.lostPercent < 1) {
      low = guess;
      if (!best || result.receivedPps > best.receivedPps) best = result;
    } else {
      high = guess;
    }
    guess = (low + high) / 2;
  }
  if (!best) throw new Error(`UDP ${payload}-byte payloads: no rate arrived with under 1% loss`);
  return { framesPerSecond: best.receivedPps, mbps: (best.receivedPps * payload * 8) / 1e6 };
}

function percentile(sorted: number[], fraction: number): number {
  const index = Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1);
  return sorted[Math.max(0, index)];
}

/** Pings the server `count` times, one every 10 ms; p50 and p99 of the replies. */
export async function rtt(client: Host, count: number): Promise<RttResult> {
  const result = await client.run(
    ["ping", "-n", "-c", String(count), "-i", "0.01", "-W", "1", SERVER],
    { timeoutMs: count * 10 + 15_000 },
  );
  const times = [...result.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  if (times.length < count / 2) {
    throw new Error(`ping: ${times.length} of ${count} replies: ${result.stderr.trim()}`);
  }
  times.sort((a, b) => a - b);
  trace(`ping: ${times.length} of ${count} replies, ${times[0]}..${times.at(-1)} ms`);
  return { p50: percentile(times, 0.5), p99: percentile(times, 0.99) };
}

/** RTT under one iperf3 TCP stream: pings while the stream runs (after its omitted start). */
export async function rttUnderLoad(
  client: Host,
  d: Durations,
): Promise<{ rtt: RttResult; load: TcpResult }> {
  const load = tcp(client, 1, d);
  await sleep((d.tcpOmitSeconds + 0.5) * 1000);
  const count = Math.max(20, Math.floor((d.tcpSeconds - 1) * 100));
  const [rttResult, loadResult] = await Promise.all([rtt(client, count), load]);
  return { rtt: rttResult, load: loadResult };
}

const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds a process used: user + system of all its threads and waited-for children. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // Fields after the command name, which may hold spaces: ") S ppid ..." -> utime is 14th overall.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const [utime, stime, cutime, cstime] = fields.slice(11, 15).map(Number);
  return (utime + stime + cutime + cstime) / CLOCK_TICKS_PER_SECOND;
}

/** Peak resident memory (VmHWM) of a process, in MB. */
export function peakResidentMb(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = /VmHWM:\s+(\d+) kB/.exec(status);
  if (!match) throw new Error(`No VmHWM for process ${pid}`);
  return Number(match[1]) / 1024;
}

/** What a cloud's broadcasts cost the sender's plug, and how many arrived. */
export interface BroadcastResult {
  /** Broadcast frames the sending host sent. */
  frames: number;
  /** Datagrams that left the sender's underlay interface per broadcast frame. */
  datagramsPerFrame: number;
  /** Of the frames times the receivers, the share that came out of the receivers' TAPs. */
  delivered: number;
  /** CPU milliseconds of the sender's plug per 1000 broadcast frames. */
  cpuMsPerThousand: number;
}

/** Packets a host's interface has sent and received so far. */
async function packets(host: Host, iface: string): Promise<{ tx: number; rx: number }> {
  const [link] = JSON.parse(await host.sh(["ip", "-s", "-j", "link", "show", iface]));
  return { tx: link.stats64.tx.packets, rx: link.stats64.rx.packets };
}

/**
 * `sender` pings the overlay's broadcast address `count` times, 500 a second,
 * with `bytes` of payload; nobody answers (hosts ignore broadcast pings by
 * default), so every frame is a one-way broadcast. Counts the datagrams on
 * the sender's eth0, the frames out of each receiver's tap0, and the sender
 * plug's CPU time (process `pid`).
 */
export async function broadcastCost(
  sender: Host,
  pid: number,
  receivers: Host[],
  broadcast: string,
  count: number,
  bytes = 200,
): Promise<BroadcastResult> {
  const sentBefore = await packets(sender, "eth0");
  const receivedBefore = await Promise.all(receivers.map((host) => packets(host, "tap0")));
  const cpuBefore = cpuSeconds(pid);
  await sender.sh(
    ["ping", "-n", "-q", "-b", "-c", String(count), "-i", "0.002", "-s", String(bytes), broadcast],
    count * 2 + 30_000,
  ).catch(() => {}); // ping exits 1 when no reply came, which is the point
  await sleep(500);
  const cpu = cpuSeconds(pid) - cpuBefore;
  const sent = (await packets(sender, "eth0")).tx - sentBefore.tx;
  const receivedAfter = await Promise.all(receivers.map((host) => packets(host, "tap0")));
  const received = receivedAfter.reduce(
    (sum, after, i) => sum + after.rx - receivedBefore[i].rx,
    0,
  );
  trace(`broadcast: ${count} frames, ${sent} datagrams out, ${received} frames delivered`);
  return {
    frames: count,
    datagramsPerFrame: sent / count,
    delivered: received / (count * receivers.length),
    cpuMsPerThousand: (cpu * 1000) / (count / 1000),
  };
}
