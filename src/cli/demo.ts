/**
 * `vdeno demo`: a Local Area Cloud on this machine. Network namespaces play
 * hosts on a bridged LAN; on each, a vdeno plug joins the same vxvde group
 * with a TAP; then every member pings every other and a matrix is printed.
 * When QEMU and a Debian cloud kernel are installed, a small VM joins too,
 * through QEMU's own `-netdev vde,sock=vxvde://...` (the tutorial's third
 * member). Everything created is removed on exit, also on Ctrl-C.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { selfCommand } from "../self.ts";
import { installedCloudKernel, RESULT_PREFIX, vmImage } from "../vm/image.ts";
import { qemuCommand } from "../vm/qemu.ts";
import { UsageError } from "./usage.ts";

export const DEMO_USAGE = `Usage: vdeno demo [OPTIONS]

Builds a demo Local Area Cloud of network namespaces (needs root), shows that
its members ping each other over vxvde, and removes everything it made.

Options:
  -n, --hosts N     how many hosts (default 3, at most 9)
  -g, --group VNL   the cloud (default vxvde://234.0.0.1)
  -k, --keep        keep the cloud up until Ctrl-C, to explore it
      --no-vm       leave out the QEMU VM even when QEMU is installed
  -h, --help        show this help`;

const decoder = new TextDecoder();

async function run(argv: string[], check = true): Promise<{ code: number; output: string }> {
  const result = await new Deno.Command(argv[0], { args: argv.slice(1), stdin: "null" }).output();
  const output = decoder.decode(result.stdout) + decoder.decode(result.stderr);
  if (check && result.code !== 0) throw new Error(`${argv.join(" ")} failed: ${output.trim()}`);
  return { code: result.code, output };
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
    throw new UsageError(`Bad --hosts: ${values.hosts}; use 2 to 9`, DEMO_USAGE);
  }
  if (Deno.uid() !== 0) {
    throw new Error("The demo builds network namespaces and needs root: run it with sudo");
  }
  const prefix = `vdeno-demo-${Deno.pid}`;
  const lanNs = `${prefix}-lan`;
  const hosts = Array.from({ length: count }, (_, i) => `${prefix}-h${i + 1}`);
  const plugs: Deno.ChildProcess[] = [];
  const namespaces = [...hosts];
  let vmProcess: Deno.ChildProcess | undefined;
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    wakeKeep?.();
  };
  let wakeKeep: (() => void) | undefined;
  for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, onSignal);
  try {
    console.log(`Building a Local Area Cloud of ${count} hosts on ${values.group}`);
    await run(["ip", "netns", "add", lanNs]);
    await run(["ip", "-n", lanNs, "link", "add", "br0", "type", "bridge"]);
    await run(["ip", "-n", lanNs, "link", "set", "br0", "up"]);
    for (const [i, netns] of hosts.entries()) {
      if (interrupted) return 130;
      await run(["ip", "netns", "add", netns]);
      await run([
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        netns,
        "type",
        "veth",
        "peer",
        "name",
        `p${i + 1}`,
        "netns",
        lanNs,
      ]);
      await run(["ip", "-n", lanNs, "link", "set", `p${i + 1}`, "master", "br0", "up"]);
      await run(["ip", "-n", netns, "addr", "add", `172.30.0.${i + 1}/24`, "dev", "eth0"]);
      await run(["ip", "-n", netns, "link", "set", "eth0", "up"]);
      await run(["ip", "-n", netns, "link", "set", "lo", "up"]);
      await run(["ip", "-n", netns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
      const [exec, ...rest] = [
        "ip",
        "netns",
        "exec",
        netns,
        ...selfCommand(),
        "plug",
        "--name",
        `${prefix}-h${i + 1}`,
        "tap://vde0",
        values.group!,
      ];
      plugs.push(
        new Deno.Command(exec, { args: rest, stdin: "null", stdout: "inherit", stderr: "inherit" })
          .spawn(),
      );
      console.log(
        `  host ${netns}: underlay 172.30.0.${
          i + 1
        } on a bridge, vdeno plug tap://vde0 ${values.group}, overlay 10.0.0.${i + 1}/24`,
      );
    }
    for (const [i, netns] of hosts.entries()) {
      await waitForLink(netns, "vde0");
      await run(["ip", "-n", netns, "addr", "add", `10.0.0.${i + 1}/24`, "dev", "vde0"]);
      await run(["ip", "-n", netns, "link", "set", "vde0", "up"]);
    }
    const addresses = hosts.map((_, i) => `10.0.0.${i + 1}`);
    let vm: DemoVm | undefined;
    if (!values["no-vm"] && await qemuAvailable()) {
      vm = await startVm(prefix, lanNs, count + 1, values.group!, addresses);
      namespaces.push(vm.netns);
      vmProcess = vm.process;
      console.log(
        `  VM ${vm.netns}: QEMU (TCG) with -netdev vde,sock=${values.group}, guest ${VM_ADDRESS}/24`,
      );
      vm.results = await vm.ready;
    }
    const members = vm ? [...addresses, VM_ADDRESS] : addresses;
    console.log("\nPing matrix over the cloud (round-trip time of one ping; rows ping columns):");
    const header = ["from \\ to", ...members];
    const rows: string[][] = [header];
    let failures = 0;
    for (const [i, netns] of hosts.entries()) {
      const row = [addresses[i]];
      for (let j = 0; j < members.length; j++) {
        if (i === j) {
          row.push("-");
          continue;
        }
        const rtt = await ping(netns, members[j]);
        if (rtt === undefined) failures++;
        row.push(rtt === undefined ? "FAIL" : `${rtt} ms`);
      }
      rows.push(row);
    }
    if (vm) {
      const row = [VM_ADDRESS];
      for (const address of addresses) {
        const result = vm.results.get(address);
        if (result !== "ok") failures++;
        row.push(result === "ok" ? "ok (guest)" : "FAIL");
      }
      rows.push([...row, "-"]);
    }
    const widths = header.map((_, c) => Math.max(...rows.map((r) => r[c].length)));
    for (const row of rows) {
      console.log("  " + row.map((cell, c) => cell.padEnd(widths[c])).join("  "));
    }
    console.log(
      failures === 0 ? "\nEvery host reaches every other." : `\n${failures} pairs failed.`,
    );
    if (values.keep && !interrupted) {
      console.log(
        `\nThe cloud stays up until Ctrl-C. Try:\n  sudo ip netns exec ${
          hosts[0]
        } ping 10.0.0.2\n  sudo ${selfCommand().join(" ")} status`,
      );
      await new Promise<void>((resolve) => wakeKeep = resolve);
    }
    return failures === 0 ? 0 : 1;
  } finally {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      Deno.removeSignalListener(signal, onSignal);
    }
    if (vmProcess) {
      try {
        vmProcess.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      await vmProcess.status;
    }
    for (const plug of plugs) {
      try {
        plug.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      await plug.status;
    }
    for (const netns of [...namespaces, lanNs]) await run(["ip", "netns", "del", netns], false);
    console.log("Removed every namespace, interface and plug the demo created.");
  }
}

async function waitForLink(netns: string, name: string): Promise<void> {
  for (let tries = 0; tries < 150; tries++) {
    if ((await run(["ip", "-n", netns, "link", "show", name], false)).code === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`The plug in ${netns} did not create ${name}`);
}

async function ping(netns: string, address: string): Promise<string | undefined> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const result = await run(
      ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address],
      false,
    );
    const match = /time=([\d.]+) ms/.exec(result.output);
    if (result.code === 0 && match) return match[1];
  }
  return undefined;
}

const VM_ADDRESS = "10.0.0.21";

interface DemoVm {
  netns: string;
  process: Deno.ChildProcess;
  ready: Promise<Map<string, string>>;
  results: Map<string, string>;
}

async function qemuAvailable(): Promise<boolean> {
  const found = await run(["sh", "-c", "command -v qemu-system-x86_64"], false);
  return found.code === 0 && installedCloudKernel() !== undefined;
}

/** Boots the tutorial's VM in a host of its own; `ready` resolves to its ping results. */
async function startVm(
  prefix: string,
  lanNs: string,
  index: number,
  vnl: string,
  peers: string[],
): Promise<DemoVm> {
  const netns = `${prefix}-vm`;
  await run(["ip", "netns", "add", netns]);
  await run([
    "ip",
    "link",
    "add",
    "eth0",
    "netns",
    netns,
    "type",
    "veth",
    "peer",
    "name",
    `p${index}`,
    "netns",
    lanNs,
  ]);
  await run(["ip", "-n", lanNs, "link", "set", `p${index}`, "master", "br0", "up"]);
  await run(["ip", "-n", netns, "addr", "add", `172.30.0.${index}/24`, "dev", "eth0"]);
  await run(["ip", "-n", netns, "link", "set", "eth0", "up"]);
  await run(["ip", "-n", netns, "link", "set", "lo", "up"]);
  await run(["ip", "-n", netns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
  const image = await vmImage();
  const mac = `52:54:00:${
    [0, 0, 0].map(() => Math.floor(Math.random() * 256).toString(16).padStart(2, "0")).join(":")
  }`;
  const qemu = qemuCommand(image, {
    address: `${VM_ADDRESS}/24`,
    peers,
    mac,
    netdev: `vde,id=net0,sock=${vnl}`,
  });
  const process = new Deno.Command("ip", {
    args: ["netns", "exec", netns, ...qemu],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const ready = (async () => {
    let console = "";
    const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const deadline = setTimeout(() => reader.cancel(), 180_000);
    while (!console.includes(`${RESULT_PREFIX} ready`)) {
      const { value, done } = await reader.read();
      if (done) break;
      console += value;
    }
    clearTimeout(deadline);
    reader.releaseLock();
    process.stdout.cancel().catch(() => {});
    process.stderr.cancel().catch(() => {});
    const results = new Map<string, string>();
    for (
      const match of console.matchAll(new RegExp(`^${RESULT_PREFIX} ping (\\S+) (ok|fail)`, "gm"))
    ) {
      results.set(match[1], match[2]);
    }
    return results;
  })();
  return { netns, process, ready, results: new Map() };
}
