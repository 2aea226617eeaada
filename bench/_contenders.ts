/**
 * The contenders: vdeno and vde_plug each plug `tap0` into the same vxvde
 * group in both hosts; `vdeno-sealed` is vdeno on a keyed network (`key=`,
 * AES-256-GCM), to show what the encryption costs; the kernel's VXLAN device
 * is the ceiling. Each gives
 * the hosts the same overlay addresses (10.0.0.1 and 10.0.0.2), so the
 * workloads do not know which one carries them.
 *
 * Asked for by name only (`--only vdeno-vde,vde_plug-vde`): vdeno's native
 * `vde://` and vde_plug each plug both hosts' `tap0` into one `vde_switch`;
 * `vdeno-vlan` and `vde_plug-vlan` put both on VLAN 5 of the cloud
 * (`vlan://5{vxvde://...}`: vdeno's own vlan://, and libvdeplug-vlan).
 *
 * @module
 */

import { Host, type Process, sleep } from "../app/lab.ts";
import { allowBigSocketBuffers } from "./_workloads.ts";

/** Names of the contenders, in the order they are listed. */
export const CONTENDERS = [
  "vdeno",
  "vdeno-sealed",
  "vde_plug",
  "kernel",
  "vdeno-ns",
  "vdens",
] as const;

/** Contenders run only when `--only` names them: both hosts on one vde_switch. */
export const SWITCH_CONTENDERS = [
  "vdeno-vde",
  "vde_plug-vde",
  "vdeno-vlan",
  "vde_plug-vlan",
] as const;

/** One contender's name. */
export type ContenderName = typeof CONTENDERS[number] | typeof SWITCH_CONTENDERS[number];

/** A contender set up on both hosts. */
export interface RunningContender {
  /**
   * Where the workloads run, client first: the LAN's hosts, or the namespaces
   * the contender made in them (with their own iperf3 server in the second).
   */
  hosts: Host[];
  /** Process ids of the plug processes (empty for the kernel). */
  pids: number[];
  /** Takes the overlay down, leaving the hosts as they were. */
  stop(): Promise<void>;
}

const GROUP = "239.1.2.3";
const KERNEL_GROUP = "239.1.2.4";
const MAIN_TS = new URL("../main.ts", import.meta.url).pathname;
const VDENO = [Deno.execPath(), "run", "-A", "--quiet", MAIN_TS];
/** The name of the executable a vdeno process runs (deno). */
const DENO_PROGRAM = Deno.execPath().split("/").at(-1)!;

/** The overlay address of host `index` (0-based). */
export function overlayAddress(index: number): string {
  return `10.0.0.${index + 1}`;
}

/** Sets up `name` on `hosts` and waits until host 0 pings host 1 over it. */
export async function startContender(
  name: ContenderName,
  hosts: Host[],
): Promise<RunningContender> {
  const running = name === "kernel"
    ? await startKernel(hosts)
    : name === "vdeno-ns" || name === "vdens"
    ? await startNamespaces(name, hosts)
    : await startPlugs(name, hosts);
  try {
    for (const [index, host] of running.hosts.entries()) {
      await host.configure(running.link, `${overlayAddress(index)}/24`);
    }
    if (!(await running.hosts[0].pingable(overlayAddress(1), 15_000))) {
      throw new Error(`${name}: ${overlayAddress(1)} does not answer over the overlay`);
    }
  } catch (error) {
    await running.stop();
    throw error;
  }
  return running;
}

async function startPlugs(
  name: Exclude<ContenderName, "kernel" | "vdeno-ns" | "vdens">,
  hosts: Host[],
): Promise<RunningContender & { link: string }> {
  let keyDirectory: string | undefined;
  let network = `vxvde://${GROUP}`;
  if (name === "vdeno-vlan" || name === "vde_plug-vlan") network = `vlan://5{${network}}`;
  if (name === "vdeno-vde" || name === "vde_plug-vde") {
    keyDirectory = await Deno.makeTempDir({ prefix: "vdeno-bench-switch-" });
    const switchDir = `${keyDirectory}/sw`;
    await hosts[0].sh(["vde_switch", "-s", switchDir, "-d", "-p", `${keyDirectory}/pid`]);
    network = `vde://${switchDir}`;
  }
  if (name === "vdeno-sealed") {
    keyDirectory = await Deno.makeTempDir();
    const key = `${keyDirectory}/bench.key`;
    await hosts[0].sh([...VDENO, "keygen", key]);
    network = `vxvde://${GROUP}/key='${key}'`;
  }
  const plugArgs = ["tap://tap0", network];
  const processes: Process[] = hosts.map((host) =>
    name.startsWith("vde_plug")
      ? host.spawn(["vde_plug", ...plugArgs])
      : host.spawn([...VDENO, "plug", ...plugArgs])
  );
  const stop = async () => {
    for (const process of processes) await process.stop("SIGTERM");
    if (keyDirectory) {
      const switchPid = await Deno.readTextFile(`${keyDirectory}/pid`).catch(() => "");
      if (switchPid.trim()) await hosts[0].run(["kill", switchPid.trim()]);
      await Deno.remove(keyDirectory, { recursive: true });
    }
    // The TAP goes with its process; wait so the next contender can create tap0.
    for (const host of hosts) await waitForLinkGone(host, "tap0");
  };
  try {
    for (const host of hosts) await host.waitForLink("tap0", 30_000);
  } catch (error) {
    await stop();
    const output = processes.map((p) => p.stderr.trim()).filter(Boolean).join("; ");
    throw new Error(`${name} did not open tap0: ${output || (error as Error).message}`);
  }
  const pids = processes.map((p) => p.child.pid);
  await checkPrograms(pids, name.startsWith("vde_plug") ? "vde_plug" : DENO_PROGRAM, stop);
  return { link: "tap0", hosts, pids, stop };
}

async function startKernel(hosts: Host[]): Promise<RunningContender & { link: string }> {
  const stop = async () => {
    for (const host of hosts) await host.run(["ip", "link", "del", "vx0"]);
  };
  try {
    for (const host of hosts) {
      await host.sh([
        "ip",
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "group",
        KERNEL_GROUP,
        "dev",
        "eth0",
        "dstport",
        "4789",
      ]);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { link: "vx0", hosts, pids: [], stop };
}

/** A namespace a contender made, entered with nsenter through a process that lives in it. */
class NamespaceHost extends Host {
  readonly #pid: number;

  constructor(pid: number, label: string) {
    super(label, "", "");
    this.#pid = pid;
  }

  override wrap(argv: string[]): string[] {
    return ["nsenter", "--target", String(this.#pid), "--net", "--", ...argv];
  }
}

/**
 * The namespace's command: it says which process it is, runs the iperf3 server
 * in the second host's namespace, then waits for its stdin to close and stops
 * the server. So the namespace and all in it last until stop() closes stdin,
 * or until the benchmark ends however it ends.
 */
function namespaceCommand(index: number): string[] {
  const server = index === 1 ? "iperf3 -s --forceflush & " : "";
  return ["sh", "-c", `echo "namespace pid $$"; ${server}read line; kill $! 2>/dev/null`];
}

/**
 * `vdeno ns vxvde://GROUP -- COMMAND` or `vdens vxvde://GROUP COMMAND` in each
 * host. The workloads run in the namespaces, as root of the LAN's host
 * (nsenter --net keeps the benchmark's own privileges there).
 */
async function startNamespaces(
  name: "vdeno-ns" | "vdens",
  hosts: Host[],
): Promise<RunningContender & { link: string }> {
  const network = `vxvde://${GROUP}`;
  const processes: Process[] = hosts.map((host, index) =>
    host.spawn(
      name === "vdens"
        ? ["vdens", network, ...namespaceCommand(index)]
        : [...VDENO, "ns", network, "--", ...namespaceCommand(index)],
      { stdin: "piped" },
    )
  );
  const stop = async () => {
    for (const process of processes) {
      await process.child.stdin.close().catch(() => {});
      // vdeno ns sends its goodbye when the command ends; give it the time to.
      await Promise.race([process.child.status, sleep(5000)]);
      await process.stop("SIGTERM");
    }
  };
  const inside: Host[] = [];
  try {
    for (const [index, process] of processes.entries()) {
      const said = /^namespace pid (\d+)$/m;
      await process.waitForOutput((text) => said.test(text), 30_000);
      const pid = Number(said.exec(process.stdout)![1]);
      inside.push(new NamespaceHost(pid, `${name}'s namespace in ${hosts[index].netns}`));
      await allowBigSocketBuffers(inside[index]);
    }
    await processes[1].waitForOutput((text) => text.includes("listening"), 10_000);
  } catch (error) {
    await stop();
    const output = processes.map((p) => p.stderr.trim()).filter(Boolean).join("; ");
    throw new Error(`${name} did not start: ${output || (error as Error).message}`);
  }
  const pids = processes.map((p) => p.child.pid);
  await checkPrograms(pids, name === "vdens" ? "vdens" : DENO_PROGRAM, stop);
  return { link: "vde0", hosts: inside, pids, stop };
}

/**
 * `ip netns exec` execs the program, so each child's pid is the plug's own; the
 * cost figures depend on it, so check that each process is `program`.
 */
async function checkPrograms(
  pids: number[],
  program: string,
  stop: () => Promise<void>,
): Promise<void> {
  for (const pid of pids) {
    const command = Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
    if (!program.startsWith(command)) {
      await stop();
      throw new Error(`Process ${pid} is ${command}, not ${program}: its cost would be wrong`);
    }
  }
}

async function waitForLinkGone(host: Host, name: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while ((await host.run(["ip", "link", "show", name])).code === 0) {
    if (Date.now() > deadline) throw new Error(`${name} stayed in ${host.netns}`);
    await sleep(100);
  }
}
