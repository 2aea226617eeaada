/**
 * `vdeno status`: which plugs run, and for one of them its VNLs, counters,
 * learned MACs and peers. A table for people, `--json` for scripts,
 * `--watch` to follow the rates like top.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  controlDirectory,
  controlSockets,
  type NamespaceInfo,
  NoAnswer,
  type PlugStatus,
  queryStatus,
  removeIfStale,
  type StatusReport,
} from "../control.ts";
import { interfaceAddresses } from "../../ffi/os.ts";
import { SocketAddress } from "../../ffi/net.ts";
import { UsageError } from "./usage.ts";

export const STATUS_USAGE = `Usage:
  vdeno status [OPTIONS]            list the running plugs
  vdeno status [OPTIONS] NAME|PID   details of one plug
  vdeno status --cloud [NAME|PID]   the members each plug has heard on its network

Options:
  -c, --cloud           per network: each member heard (underlay address), its MACs,
                        when it was last heard, and whether it is vdeno where that shows
  -j, --json            machine-readable output
  -w, --watch [SECS]    refresh every SECS seconds (default 1), with rates per second
  -h, --help            show this help

Plugs answer on Unix sockets in ${"$"}XDG_RUNTIME_DIR/vdeno (or /run/vdeno for root,
/tmp/vdeno-UID for other users). Sockets left by plugs that died are removed.`;

/** Runs `vdeno status`; resolves to the exit code. */
export async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      json: { type: "boolean", short: "j" },
      cloud: { type: "boolean", short: "c" },
      watch: { type: "boolean", short: "w" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    console.log(STATUS_USAGE);
    return 0;
  }
  let interval = 1;
  let targets = positionals;
  if (values.watch && targets.length > 0 && /^\d+(\.\d+)?$/.test(targets[0])) {
    interval = Number(targets[0]);
    targets = targets.slice(1);
  }
  if (targets.length > 1) {
    throw new UsageError("status takes at most one plug name or pid");
  }
  const target = targets[0];
  if (values.cloud) {
    if (values.watch) throw new UsageError("--cloud and --watch do not go together");
    const chosen = await collect(target);
    const clouds = cloudView(chosen, target === undefined ? chosen : await collect(undefined));
    console.log(values.json ? JSON.stringify(clouds, null, 2) : renderClouds(clouds));
    return 0;
  }
  if (!values.watch) {
    const reports = await collect(target);
    console.log(
      values.json
        ? JSON.stringify(target ? reports[0] : reports, null, 2)
        : render(reports, target),
    );
    return 0;
  }
  let previous: StatusReport[] = [];
  let previousTime = performance.now();
  const stop = new Promise<void>((resolve) => Deno.addSignalListener("SIGINT", () => resolve()));
  for (;;) {
    const reports = await collect(target);
    const now = performance.now();
    const rates = rateTable(reports, previous, (now - previousTime) / 1000);
    previous = reports;
    previousTime = now;
    const text = values.json
      ? JSON.stringify({ reports, rates })
      : `\x1b[H\x1b[2J${new Date().toISOString()}  (every ${interval}s, Ctrl-C to quit)\n\n${
        render(reports, target)
      }\n${rates}`;
    console.log(text);
    const tick = new Promise((resolve) => setTimeout(resolve, interval * 1000));
    if (await Promise.race([tick.then(() => false), stop.then(() => true)])) return 0;
  }
}

async function collect(target: string | undefined): Promise<StatusReport[]> {
  const reports: StatusReport[] = [];
  for (const socket of controlSockets()) {
    if (target !== undefined && socket.name !== target && !/^\d+$/.test(target)) continue;
    let report: StatusReport;
    try {
      report = printable(await queryStatus(socket.path));
    } catch (error) {
      if (!(error instanceof NoAnswer)) throw error;
      // A socket nobody listens on was left by a plug that died: clean it up.
      if (error.stale) removeIfStale(socket.path);
      else {console.error(
          `vdeno status: ${printable(socket.name)} gave no report: ${error.message}`,
        );}
      continue;
    }
    if (target === undefined || report.name === target || String(report.pid) === target) {
      reports.push(report);
    }
  }
  if (target !== undefined && reports.length === 0) {
    throw new Error(`No running plug named ${target} (looked in ${controlDirectory()})`);
  }
  return reports;
}

// deno-lint-ignore no-control-regex
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/**
 * `value` with every control character (C0, DEL, C1, and the bidirectional
 * overrides) in its strings and keys replaced by U+FFFD: what a plug reports
 * reaches a terminal, and a socket in the directory could be anyone's.
 */
function printable<T>(value: T): T {
  if (typeof value === "string") {
    return value.replace(CONTROL_CHARACTERS, "\ufffd") as T;
  }
  if (Array.isArray(value)) return value.map(printable) as T;
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [printable(key), printable(item)]),
    ) as T;
  }
  return value;
}

function formatDuration(seconds: number): string {
  const s = Math.floor(seconds);
  const [h, m] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60)];
  return h > 0
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m > 0
    ? `${m}m${String(s % 60).padStart(2, "0")}s`
    : `${s}s`;
}

function drops(counters: PlugStatus["counters"]): number {
  // Our own multicast echo is expected on a healthy network: not a loss worth flagging.
  return Object.entries(counters).filter(([name]) =>
    name.startsWith("drop") && name !== "dropOwnEcho"
  ).reduce((sum, [, n]) => sum + n, 0);
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd()).join(
    "\n",
  );
}

function render(reports: StatusReport[], target: string | undefined): string {
  if (target === undefined) {
    if (reports.length === 0) return `No running plugs (looked in ${controlDirectory()})`;
    const rows = [["NAME", "PID", "UPTIME", "FRAMES IN", "FRAMES OUT", "DROPS", "VNLS"]];
    for (const report of reports) {
      const sum = (name: "framesIn" | "framesOut") =>
        report.plugs.reduce((n, plug) => n + plug.counters[name], 0);
      rows.push([
        report.name,
        String(report.pid),
        formatDuration(report.uptimeSeconds),
        String(sum("framesIn")),
        String(sum("framesOut")),
        String(report.plugs.reduce((n, plug) => n + drops(plug.counters), 0)),
        report.plugs.map((plug) => plug.vnl).join(" <-> ") +
        (report.namespace ? `  (${describeNamespace(report.namespace)})` : ""),
      ]);
    }
    return table(rows);
  }
  const report = reports[0];
  const lines = [`${report.name} (pid ${report.pid}), up ${formatDuration(report.uptimeSeconds)}`];
  if (report.namespace) lines.push(describeNamespace(report.namespace));
  for (const plug of report.plugs) {
    lines.push("", plug.vnl);
    const { vnl: _vnl, counters, learned, peers, members, ...details } = plug;
    for (const [key, value] of Object.entries(details)) lines.push(`  ${key}: ${value}`);
    const nonZero = Object.entries(counters).filter(([, n]) => n !== 0);
    lines.push(
      `  counters: ${nonZero.length ? nonZero.map(([k, n]) => `${k}=${n}`).join(" ") : "all zero"}`,
    );
    if (Array.isArray(peers)) {
      lines.push(`  peers: ${peers.length ? peers.join(", ") : "none yet"}`);
    }
    if (Array.isArray(members)) {
      if (members.length === 0) lines.push("  members: none");
      else {
        const rows = [["  MEMBER", "SOURCE", "LAST HEARD", "VIA"]];
        for (
          const member of members as {
            address: string;
            source: string;
            lastHeardSeconds: number | null;
            viaGroup: boolean;
          }[]
        ) {
          rows.push([
            `  ${member.address}`,
            member.source,
            member.lastHeardSeconds === null ? "never" : `${member.lastHeardSeconds}s ago`,
            member.viaGroup ? "group" : "unicast",
          ]);
        }
        lines.push(table(rows));
      }
    }
    if (Array.isArray(learned)) {
      if (learned.length === 0) lines.push("  learned MACs: none");
      else {
        const rows = [["  MAC", "PEER", "AGE"]];
        for (const entry of learned as { mac: string; peer: string; ageSeconds: number }[]) {
          rows.push([`  ${entry.mac}`, entry.peer, `${entry.ageSeconds}s`]);
        }
        lines.push(table(rows));
      }
    }
  }
  return lines.join("\n");
}

function rateTable(reports: StatusReport[], previous: StatusReport[], seconds: number): string {
  if (previous.length === 0 || seconds <= 0) return "";
  const rows = [[
    "NAME",
    "VNL",
    "FRAMES/S IN",
    "FRAMES/S OUT",
    "MBIT/S IN",
    "MBIT/S OUT",
    "DROPS/S",
  ]];
  for (const report of reports) {
    const before = previous.find((p) => p.name === report.name);
    if (!before) continue;
    report.plugs.forEach((plug, i) => {
      const old = before.plugs[i]?.counters;
      if (!old) return;
      const rate = (now: number, then: number) => (now - then) / seconds;
      rows.push([
        report.name,
        plug.vnl,
        rate(plug.counters.framesIn, old.framesIn).toFixed(0),
        rate(plug.counters.framesOut, old.framesOut).toFixed(0),
        (rate(plug.counters.bytesIn, old.bytesIn) * 8 / 1e6).toFixed(2),
        (rate(plug.counters.bytesOut, old.bytesOut) * 8 / 1e6).toFixed(2),
        rate(drops(plug.counters), drops(old)).toFixed(0),
      ]);
    });
  }
  return table(rows);
}

function describeNamespace(namespace: NamespaceInfo): string {
  return `vdeno ns, namespace pid ${namespace.pid}: ${namespace.command.join(" ")}`;
}

/** A member of a cloud as one plug heard it: an underlay address and the MACs behind it. */
interface Member {
  address: string;
  macs: string[];
  /** When its latest frame arrived (the freshest of its MACs). */
  lastHeard: string;
  ageSeconds: number;
  /** true when the member must be vdeno (a keyed network, or a plug on this host); null: unknown. */
  vdeno: true | null;
}

/** The members one vxvde plug has heard. */
interface Cloud {
  name: string;
  pid: number;
  vnl: string;
  /** The port its datagrams leave from, when the scheme has one of its own (vxvde). */
  unicastPort?: number;
  members: Member[];
}

interface LearnedEntry {
  mac: string;
  peer: string;
  ageSeconds: number;
}

/**
 * The cloud as each vxvde plug of `reports` hears it: its learned MACs grouped
 * by the underlay address they came from. Nothing on vxvde's wire tells vdeno
 * from vde_plug, so a member is known to be vdeno only on a keyed network
 * (which only vdeno speaks) or when it is one of the plugs on this host,
 * `everyLocal`.
 */
function cloudView(reports: StatusReport[], everyLocal: StatusReport[]): Cloud[] {
  const now = Date.now();
  const clouds: Cloud[] = [];
  for (const report of reports) {
    for (const plug of report.plugs) {
      if (!Array.isArray(plug.learned)) continue;
      const byAddress = new Map<string, Member>();
      for (const entry of plug.learned as LearnedEntry[]) {
        let member = byAddress.get(entry.peer);
        if (!member) {
          const port = Number(/:(\d+)$/.exec(entry.peer)?.[1]);
          // A plug on this host, with that unicast port, on one of this host's addresses.
          const local = typeof plug.unicastPort === "number" && everyLocal.some((other) =>
            other.plugs.some((p) =>
              p.unicastPort === port && p.unicastPort !== plug.unicastPort
            )
          ) && isLocalPeer(entry.peer);
          member = {
            address: entry.peer,
            macs: [],
            lastHeard: "",
            ageSeconds: Infinity,
            vdeno: plug.sealed === true || local ? true : null,
          };
          byAddress.set(entry.peer, member);
        }
        member.macs.push(entry.mac);
        member.ageSeconds = Math.min(member.ageSeconds, entry.ageSeconds);
      }
      const members = [...byAddress.values()].sort((a, b) => a.address.localeCompare(b.address));
      for (const member of members) {
        member.lastHeard = new Date(now - member.ageSeconds * 1000).toISOString();
      }
      clouds.push({
        name: report.name,
        pid: report.pid,
        vnl: plug.vnl,
        unicastPort: typeof plug.unicastPort === "number" ? plug.unicastPort : undefined,
        members,
      });
    }
  }
  return clouds;
}

/** Whether the host part of `peer` (address:port) is an address of this host. */
function isLocalPeer(peer: string): boolean {
  const host = peer.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const ip = SocketAddress.parse(host, 0)?.ip;
  return ip !== undefined &&
    interfaceAddresses().some((entry) =>
      entry.ip.length === ip.length && entry.ip.every((byte, i) => byte === ip[i])
    );
}

const MACS_SHOWN = 4;

function renderClouds(clouds: Cloud[]): string {
  if (clouds.length === 0) {
    return `No running plugs that learn MACs (looked in ${controlDirectory()})`;
  }
  const parts: string[] = [];
  for (const cloud of clouds) {
    const lines = [
      `${cloud.vnl} as heard by ${cloud.name} (pid ${cloud.pid}${
        cloud.unicastPort === undefined ? "" : `, unicast port ${cloud.unicastPort}`
      }):` +
      ` ${cloud.members.length} member${cloud.members.length === 1 ? "" : "s"}`,
    ];
    if (cloud.members.length > 0) {
      const rows = [["  MEMBER", "LAST HEARD", "VDENO", "MACS"]];
      for (const member of cloud.members) {
        const shown = member.macs.slice(0, MACS_SHOWN).join(" ");
        const more = member.macs.length - MACS_SHOWN;
        rows.push([
          `  ${member.address}`,
          `${member.ageSeconds}s ago`,
          member.vdeno ? "yes" : "?",
          more > 0 ? `${shown} (+${more})` : shown,
        ]);
      }
      lines.push(table(rows));
    }
    parts.push(lines.join("\n"));
  }
  return parts.join("\n\n");
}
