/**
 * `vdeno demo`: the Local Area Cloud tutorial on one machine. Network
 * namespaces play hosts on a bridged LAN, and each brings one member to the
 * same vxvde group: a TAP plugged by `vdeno plug`, a namespace made by
 * `vdeno ns`, and, when QEMU and a Debian cloud kernel are installed, a small
 * VM on QEMU's own `-netdev vde,sock=vxvde://...`. When libvdeplug-slirp and
 * busybox are installed, one more member is the cloud's gateway
 * (`vdeno plug slirp://... GROUP`: NAT, DHCP, DNS) and the namespace takes its
 * address from it by DHCP. Then every member pings every other and a matrix
 * is printed. Everything created is removed on
 * exit, also on Ctrl-C.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { installedPluginSchemes } from "../../plugs/vdeplug.ts";
import { Lan } from "../lab.ts";
import { selfCommand } from "../self.ts";
import { installedCloudKernel, RESULT_PREFIX, vmImage } from "../vm/image.ts";
import { qemuCommand } from "../vm/qemu.ts";
import { UsageError } from "./usage.ts";

export const DEMO_USAGE = `Usage: vdeno demo [OPTIONS]

Builds the Local Area Cloud tutorial on this machine (needs root): hosts made
of network namespaces on a bridge, with a TAP (vdeno plug), a namespace
(vdeno ns) and, when QEMU is installed, a VM on the same vxvde group; with
libvdeplug-slirp, a gateway member (slirp://) whose DHCP gives the namespace
its address. Shows that every member pings every other, and removes
everything it made.

Options:
  -n, --hosts N     how many hosts with a TAP or a namespace (default 3, 2 to 9)
  -g, --group VNL   the cloud (default vxvde://234.0.0.1)
  -k, --keep        keep the cloud up until Ctrl-C, to explore it
      --no-vm       leave out the QEMU VM even when QEMU is installed
      --no-gateway  leave out the slirp:// gateway; the namespace gets a fixed address
  -h, --help        show this help`;

const decoder = new TextDecoder();
const VM_ADDRESS = "10.0.0.21";
const GATEWAY_ADDRESS = "10.0.0.254";
/**
 * libvdeplug-slirp on the demo's subnet: the gateway at .254, its DNS proxy at
 * .253, leases from .100, clear of the members' static addresses (%2F is the
 * `/` of the prefix, which would otherwise end the option).
 */
const SLIRP_VNL = `slirp:///addr=${GATEWAY_ADDRESS}%2F24/dhcp=10.0.0.100/vnameserver=10.0.0.253`;
/** udhcpc's script: applies the lease to the interface. */
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  bound|renew) ip addr add "$ip/$mask" dev "$interface" ;;
esac
`;

async function run(argv: string[], check = true): Promise<{ code: number; output: string }> {
  const result = await new Deno.Command(argv[0], { args: argv.slice(1), stdin: "null" }).output();
  const output = decoder.decode(result.stdout) + decoder.decode(result.stderr);
  if (check && result.code !== 0) throw new Error(`${argv.join(" ")} failed: ${output.trim()}`);
  return { code: result.code, output };
}

/** One member of the cloud: how it was made, its address, how to ping from it. */
interface Member {
  description: string;
  address: string;
  process: Deno.ChildProcess;
  /** argv prefix that runs a command in the member's network; undefined for the VM. */
  inside?: string[];
  /** For the VM: its own ping results, read from its console. */
  guestResults?: Promise<Map<string, string>>;
  /** The gateway answers pings but has no network of its own to ping from. */
  gateway?: boolean;
}

/** Runs the demo; resolves to the exit code. */
export async function demoCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      hosts: { type: "string", short: "n", default: "3" },
      group: { type: "string", short: "g", default: "vxvde://234.0.0.1" },
      keep: { type: "boolean", short: "k" },
      "no-vm": { type: "boolean" },
      "no-gateway": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(DEMO_USAGE);
    return 0;
  }
  const count = Number(values.hosts);
  if (!Number.isInteger(count) || count < 2 || count > 9) {
    throw new UsageError(`Bad --hosts: ${values.hosts}; use 2 to 9`);
  }
  if (Deno.uid() !== 0) {
    throw new Error("The demo builds network namespaces and needs root: run it with sudo");
  }
  const group = values.group!;
  const prefix = `vdeno-demo-${Deno.pid}`;
  let lan: Lan | undefined;
  const members: Member[] = [];
  let scriptDirectory: string | undefined;
  let interrupted = false;
  let wakeKeep: (() => void) | undefined;
  const onSignal = () => {
    interrupted = true;
    wakeKeep?.();
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, onSignal);
  try {
    lan = await Lan.create(0, { id: prefix, subnet: "172.30.0" });
    const addHost = async (index: number, role: string) => (await lan!.addHost(index, role)).netns;
    console.log(`Building a Local Area Cloud on ${group}, hosts on the underlay 172.30.0.0/24:`);
    let dhcpScript: string | undefined;
    if (!values["no-gateway"] && await gatewayAvailable()) {
      const netns = await addHost(254, "gw");
      members.push(gatewayMember(netns, prefix, group));
      console.log(`  ${netns}: ${members.at(-1)!.description}`);
      scriptDirectory = await Deno.makeTempDir({ prefix: "vdeno-demo-" });
      dhcpScript = `${scriptDirectory}/udhcpc.sh`;
      await Deno.writeTextFile(dhcpScript, UDHCPC_SCRIPT, { mode: 0o755 });
    } else if (!values["no-gateway"]) {
      console.log("  (no gateway member: it needs libvdeplug-slirp and busybox)");
    }
    for (let i = 1; i <= count; i++) {
      if (interrupted) return 130;
      const netns = await addHost(i, `h${i}`);
      const address = `10.0.0.${i}`;
      members.push(
        i === 2
          ? await namespaceMember(netns, group, address, dhcpScript)
          : await tapMember(netns, prefix, i, group, address),
      );
      console.log(`  ${netns}: ${members.at(-1)!.description}`);
    }
    const peers = members.map((member) => member.address);
    if (!values["no-vm"] && !interrupted && await qemuAvailable()) {
      const netns = await addHost(count + 1, "vm");
      members.push(await vmMember(netns, group, peers));
      console.log(`  ${netns}: ${members.at(-1)!.description}`);
    }
    if (interrupted) return 130;

    console.log("\nPing matrix over the cloud (round-trip time of one ping; rows ping columns):");
    const header = ["from \\ to", ...members.map((member) => member.address)];
    const rows: string[][] = [header];
    let failures = 0;
    for (const [i, member] of members.entries()) {
      const row = [member.address];
      const guest = member.guestResults ? await member.guestResults : undefined;
      for (const [j, target] of members.entries()) {
        let cell: string;
        if (i === j) cell = "-";
        else if (member.gateway) cell = "n/a";
        else if (guest) cell = guest.get(target.address) === "ok" ? "ok (guest)" : "FAIL";
        else if (target.guestResults && !member.inside) cell = "FAIL";
        else {
          const rtt = await ping(member.inside!, target.address);
          cell = rtt === undefined ? "FAIL" : `${rtt} ms`;
        }
        if (cell === "FAIL") failures++;
        row.push(cell);
      }
      rows.push(row);
    }
    const widths = header.map((_, c) => Math.max(...rows.map((r) => r[c].length)));
    for (const row of rows) {
      console.log("  " + row.map((cell, c) => cell.padEnd(widths[c])).join("  "));
    }
    console.log(
      failures === 0 ? "\nEvery member reaches every other." : `\n${failures} pairs failed.`,
    );
    if (values.keep && !interrupted) {
      // From the first TAP host to the next member that has an interface of its own.
      const from = members.find((member) => member.inside?.[0] === "ip")!;
      const to = members.find((member) => member !== from && !member.gateway)!;
      console.log(
        `\nThe cloud stays up until Ctrl-C. Try:\n  sudo ${
          from.inside!.join(" ")
        } ping ${to.address}\n  sudo ${selfCommand().join(" ")} status`,
      );
      await new Promise<void>((resolve) => wakeKeep = resolve);
    }
    return failures === 0 ? 0 : 1;
  } finally {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      Deno.removeSignalListener(signal, onSignal);
    }
    for (const member of members) {
      try {
        member.process.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      await member.process.status;
    }
    await lan?.dispose();
    if (scriptDirectory) await Deno.remove(scriptDirectory, { recursive: true }).catch(() => {});
    console.log("Removed every namespace, interface and process the demo created.");
  }
}

/** Starts `vdeno plug --name NAME VNL GROUP` in namespace `netns`. */
function spawnPlug(netns: string, name: string, vnl: string, group: string): Deno.ChildProcess {
  return new Deno.Command("ip", {
    args: ["netns", "exec", netns, ...selfCommand(), "plug", "--name", name, vnl, group],
    stdin: "null",
  }).spawn();
}

async function tapMember(
  netns: string,
  prefix: string,
  index: number,
  group: string,
  address: string,
): Promise<Member> {
  const process = spawnPlug(netns, `${prefix}-h${index}`, "tap://vde0", group);
  await waitForLink(netns, "vde0");
  await run(["ip", "-n", netns, "addr", "add", `${address}/24`, "dev", "vde0"]);
  await run(["ip", "-n", netns, "link", "set", "vde0", "up"]);
  return {
    description: `a TAP, vdeno plug tap://vde0 ${group}, ${address}/24`,
    address,
    process,
    inside: ["ip", "netns", "exec", netns],
  };
}

/**
 * A namespace of `vdeno ns` whose command configures vde0 and waits; others
 * enter it to ping. With `dhcpScript` vde0 takes its address from the
 * gateway's DHCP (udhcpc), else `address`.
 */
async function namespaceMember(
  netns: string,
  group: string,
  address: string,
  dhcpScript?: string,
): Promise<Member> {
  const configure = dhcpScript
    ? `ip link set vde0 up && busybox udhcpc -i vde0 -n -q -t 30 -T 1 -s ${dhcpScript} ` +
      `>/dev/null 2>&1 && echo ready $$ $(ip -4 -o addr show dev vde0 | ` +
      `sed -n 's/.* inet \\([0-9.]*\\).*/\\1/p')`
    : `ip addr add ${address}/24 dev vde0 && ip link set vde0 up && echo ready $$ ${address}`;
  const script = `${configure} && exec sleep 86400`;
  const process = new Deno.Command("ip", {
    args: ["netns", "exec", netns, ...selfCommand(), "ns", group, "sh", "-c", script],
    stdin: "null",
    stdout: "piped",
  }).spawn();
  const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  const ready = /ready (\d+) ([\d.]+)/;
  while (!ready.test(output)) {
    const { value, done } = await reader.read();
    if (done) {
      throw new Error(
        `vdeno ns did not start in ${netns}${
          dhcpScript ? " (or got no DHCP lease)" : ""
        }: ${output.trim()}`,
      );
    }
    output += value;
  }
  reader.releaseLock();
  process.stdout.cancel().catch(() => {});
  const [, pid, leased] = ready.exec(output)!;
  return {
    description: `a namespace, vdeno ns ${group} (vde0 ${leased}/24${
      dhcpScript ? " by DHCP from the gateway" : ""
    })`,
    address: leased,
    process,
    inside: ["nsenter", "--target", pid, "--net"],
  };
}

/** The gateway: slirp's NAT, DHCP and DNS on the cloud, through libvdeplug-slirp. */
function gatewayMember(netns: string, prefix: string, group: string): Member {
  const process = spawnPlug(netns, `${prefix}-gw`, SLIRP_VNL, group);
  return {
    description: `the gateway, vdeno plug slirp:// ${group}, ${GATEWAY_ADDRESS}: NAT, DHCP, DNS`,
    address: GATEWAY_ADDRESS,
    process,
    gateway: true,
  };
}

async function gatewayAvailable(): Promise<boolean> {
  const busybox = await run(["sh", "-c", "command -v busybox"], false);
  return busybox.code === 0 && installedPluginSchemes().includes("slirp");
}

async function qemuAvailable(): Promise<boolean> {
  const found = await run(["sh", "-c", "command -v qemu-system-x86_64"], false);
  return found.code === 0 && installedCloudKernel() !== undefined;
}

/** The tutorial's VM; it pings the others itself and reports on its console. */
async function vmMember(netns: string, group: string, peers: string[]): Promise<Member> {
  const image = await vmImage();
  const random = crypto.getRandomValues(new Uint8Array(3));
  const mac = `52:54:00:${[...random].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;
  const qemu = qemuCommand(image, {
    address: `${VM_ADDRESS}/24`,
    peers,
    mac,
    netdev: `vde,id=net0,sock=${group}`,
  });
  const process = new Deno.Command("ip", {
    args: ["netns", "exec", netns, ...qemu],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const guestResults = (async () => {
    let output = "";
    const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const deadline = setTimeout(() => reader.cancel(), 180_000);
    while (!output.includes(`${RESULT_PREFIX} ready`)) {
      const { value, done } = await reader.read();
      if (done) break;
      output += value;
    }
    clearTimeout(deadline);
    reader.releaseLock();
    process.stdout.cancel().catch(() => {});
    const results = new Map<string, string>();
    for (
      const match of output.matchAll(new RegExp(`^${RESULT_PREFIX} ping (\\S+) (ok|fail)`, "gm"))
    ) {
      results.set(match[1], match[2]);
    }
    return results;
  })();
  await guestResults;
  return {
    description: `a QEMU VM (TCG), -netdev vde,sock=${group}, ${VM_ADDRESS}/24`,
    address: VM_ADDRESS,
    process,
    guestResults,
  };
}

async function waitForLink(netns: string, name: string): Promise<void> {
  for (let tries = 0; tries < 150; tries++) {
    if ((await run(["ip", "-n", netns, "link", "show", name], false)).code === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`The plug in ${netns} did not create ${name}`);
}

async function ping(inside: string[], address: string): Promise<string | undefined> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const result = await run([...inside, "ping", "-c", "1", "-W", "1", address], false);
    const match = /time=([\d.]+) ms/.exec(result.output);
    if (result.code === 0 && match) return match[1];
  }
  return undefined;
}
