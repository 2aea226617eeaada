/**
 * Namespace LANs: hosts that are network namespaces, joined by veth pairs to
 * a bridge in a namespace of its own, so traffic never leaves what was built.
 * `vdeno demo`, the tests and the benchmarks build their hosts here. Names
 * are unique per process; everything is removed on dispose, and namespaces
 * left by a killed earlier run are swept.
 *
 * @module
 */

import { selfCommand } from "./self.ts";

const PREFIX = "vdn";
let lanCounter = 0;
let vdenoCommand: string[] | undefined;

/** Sets the command {@linkcode Host.vdeno} runs. */
export function setVdenoCommand(argv: string[]): void {
  vdenoCommand = argv;
}

/**
 * The command {@linkcode Host.vdeno} runs unless set: vdeno from this source
 * tree when there is one (a test or a benchmark), else this program itself.
 */
function defaultVdenoCommand(): string[] {
  const main = new URL("../main.ts", import.meta.url);
  try {
    if (main.protocol === "file:" && Deno.statSync(main).isFile) {
      return [Deno.execPath(), "run", "--allow-all", "--quiet", main.pathname];
    }
  } catch {
    // Not a source tree: a bundle or a compiled executable.
  }
  return selfCommand();
}

/** Output of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, with an optional time limit in ms. */
export async function run(
  argv: string[],
  options: { timeoutMs?: number; stdin?: string; env?: Record<string, string> } = {},
): Promise<RunResult> {
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, options.timeoutMs ?? 60_000);
  const output = await child.output();
  clearTimeout(timer);
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs a command that must succeed; throws with its stderr otherwise. */
export async function sh(argv: string[], timeoutMs = 30_000): Promise<string> {
  const result = await run(argv, { timeoutMs });
  if (result.code !== 0) {
    throw new Error(`${argv.join(" ")} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** Whether a program is on PATH. */
export async function have(program: string): Promise<boolean> {
  return (await run(["sh", "-c", `command -v ${program}`])).code === 0;
}

/** Whether an executable named `program` is in a directory of $PATH (no process started). */
export function onPath(program: string): boolean {
  for (const directory of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!directory) continue;
    try {
      const info = Deno.statSync(`${directory}/${program}`);
      if (info.isFile && (info.mode ?? 0) & 0o111) return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

/** A process started in a host, killed on dispose. */
export class Process {
  readonly child: Deno.ChildProcess;
  readonly argv: string[];
  #stdout = "";
  #stderr = "";
  readonly #done: Promise<void>;

  constructor(argv: string[], child: Deno.ChildProcess) {
    this.argv = argv;
    this.child = child;
    const collect = async (stream: ReadableStream<Uint8Array>, into: "out" | "err") => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        if (into === "out") this.#stdout += chunk;
        else this.#stderr += chunk;
      }
    };
    this.#done = Promise.all([collect(child.stdout, "out"), collect(child.stderr, "err")]).then(
      () => {},
    );
  }

  get stdout(): string {
    return this.#stdout;
  }

  get stderr(): string {
    return this.#stderr;
  }

  /** Waits until `predicate` holds for stdout+stderr, or fails after `timeoutMs`. */
  async waitForOutput(predicate: (text: string) => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.#stdout + this.#stderr)) {
      if (Date.now() > deadline) {
        throw new Error(
          `Timed out waiting for output of ${this.argv.join(" ")}:\n${this.#stdout}${this.#stderr}`,
        );
      }
      await sleep(50);
    }
  }

  /** Sends a signal and waits for the exit status (SIGKILL after 10 s). */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 10_000);
    const status = await this.child.status;
    clearTimeout(timer);
    // Children of the process may still hold its output open: do not wait for them.
    await Promise.race([this.#done, sleep(1000)]);
    return status;
  }

  /** The exit status once the process ends by itself. */
  async exited(): Promise<Deno.CommandStatus> {
    const status = await this.child.status;
    await this.#done;
    return status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop("SIGKILL");
  }
}

/** Waits until `condition` holds, checking every 50 ms; fails naming `what` after `timeoutMs`. */
export async function waitUntil(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await sleep(50);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A host: a network namespace with `eth0` on the LAN's bridge. */
export class Host {
  readonly netns: string;
  /** The host's underlay IPv4 address. */
  readonly address: string;
  /** The host's underlay IPv6 address. */
  readonly address6: string;
  readonly processes: Process[] = [];

  constructor(netns: string, address: string, address6: string) {
    this.netns = netns;
    this.address = address;
    this.address6 = address6;
  }

  /** argv prefixed to run inside this host. */
  wrap(argv: string[]): string[] {
    return ["ip", "netns", "exec", this.netns, ...argv];
  }

  /** Runs a command in the host to completion. */
  run(argv: string[], options: { timeoutMs?: number; stdin?: string } = {}): Promise<RunResult> {
    return run(this.wrap(argv), options);
  }

  /** Runs a command in the host that must succeed. */
  sh(argv: string[], timeoutMs?: number): Promise<string> {
    return sh(this.wrap(argv), timeoutMs);
  }

  /** Starts a long-running command in the host; it is killed when the LAN is disposed. */
  spawn(
    argv: string[],
    options: { env?: Record<string, string>; stdin?: "piped" | "null" } = {},
  ): Process {
    const full = this.wrap(argv);
    const child = new Deno.Command(full[0], {
      args: full.slice(1),
      stdin: options.stdin ?? "null",
      stdout: "piped",
      stderr: "piped",
      env: options.env,
    }).spawn();
    const process = new Process(full, child);
    this.processes.push(process);
    return process;
  }

  /** Starts `vdeno ARGS...` in the host. */
  vdeno(args: string[], options: { env?: Record<string, string> } = {}): Process {
    vdenoCommand ??= defaultVdenoCommand();
    return this.spawn([...vdenoCommand, ...args], options);
  }

  /**
   * Waits until `ip link show NAME` succeeds in the host. Pass the process
   * expected to create it, so a failure says what that process printed.
   */
  async waitForLink(name: string, timeoutMs = 30_000, creator?: Process): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.run(["ip", "link", "show", name])).code !== 0) {
      if (Date.now() > deadline) {
        const said = creator
          ? `; ${creator.argv.join(" ")} printed: ${creator.stdout}${creator.stderr}`
          : "";
        throw new Error(`${name} did not appear in ${this.netns}${said}`);
      }
      await sleep(100);
    }
  }

  /** Brings up interface `name` with `cidr` (IPv4 or IPv6, with prefix length). */
  async configure(name: string, cidr: string, mac?: string): Promise<void> {
    if (mac) await this.sh(["ip", "link", "set", name, "address", mac]);
    await this.sh([
      "ip",
      "addr",
      "add",
      cidr,
      "dev",
      name,
      ...(cidr.includes(":") ? ["nodad"] : []),
    ]);
    await this.sh(["ip", "link", "set", name, "up"]);
  }

  /** Pings `address` until one reply arrives or `timeoutMs` passes; returns whether it did. */
  async pingable(address: string, timeoutMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const result = await this.run(["ping", "-c", "1", "-W", "1", address], { timeoutMs: 3000 });
      if (result.code === 0) return true;
      await sleep(100);
    }
    return false;
  }
}

/** Options of {@linkcode Lan.create}. */
export interface LanOptions {
  /** Underlay interfaces per host, each on a bridge of its own (default 1: eth0; then eth1...). */
  links?: number;
  /** Prefix of the namespaces' names (default: unique to this process and LAN, and swept). */
  id?: string;
  /** The first three bytes of eth0's IPv4 /24, as "172.30.0" (default: 10.<net>.0). */
  subnet?: string;
}

/** Hosts on a bridged underlay. */
export class Lan {
  readonly id: string;
  readonly hosts: Host[];
  readonly #namespaces: string[];

  readonly #links: number;
  readonly #net: number;
  readonly #subnet?: string;

  private constructor(id: string, links: number, net: number, subnet?: string) {
    this.id = id;
    this.hosts = [];
    this.#namespaces = [];
    this.#links = links;
    this.#net = net;
    this.#subnet = subnet;
  }

  /** Builds `count` hosts. Host i has 10.<net>.<link>.<i+1>/24 and fd00:<net>:<link>::<i+1>/64. */
  static async create(count: number, options: LanOptions = {}): Promise<Lan> {
    await sweepStale();
    const links = options.links ?? 1;
    const net = 100 + ((Deno.pid * 7 + lanCounter) % 150);
    const id = options.id ?? `${PREFIX}${Deno.pid}x${lanCounter}`;
    lanCounter++;
    const lan = new Lan(id, links, net, options.subnet);
    try {
      const switchNs = `${id}-sw`;
      lan.#namespaces.push(switchNs);
      await sh(["ip", "netns", "add", switchNs]);
      await sh(["ip", "-n", switchNs, "link", "set", "lo", "up"]);
      for (let link = 0; link < links; link++) {
        await sh(["ip", "-n", switchNs, "link", "add", `br${link}`, "type", "bridge"]);
        await sh(["ip", "-n", switchNs, "link", "set", `br${link}`, "up"]);
      }
      for (let i = 1; i <= count; i++) await lan.addHost(i);
    } catch (error) {
      await lan.dispose();
      throw error;
    }
    return lan;
  }

  /**
   * Adds a host named `<id>-<name>` whose addresses end in `index` (1 to 254):
   * <subnet>.<index> (10.<net>.<link>.<index>) and fd00:<net>:<link>::<index>.
   */
  async addHost(index: number, name = `h${index}`): Promise<Host> {
    const switchNs = `${this.id}-sw`;
    const netns = `${this.id}-${name}`;
    const net = this.#net;
    const ipv4 = (link: number) => link === 0 && this.#subnet ? this.#subnet : `10.${net}.${link}`;
    this.#namespaces.push(netns);
    await sh(["ip", "netns", "add", netns]);
    await sh(["ip", "-n", netns, "link", "set", "lo", "up"]);
    for (let link = 0; link < this.#links; link++) {
      const peer = `${name}l${link}`;
      await sh([
        "ip",
        "link",
        "add",
        "vdntmp",
        "netns",
        netns,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        switchNs,
      ]);
      await sh(["ip", "-n", switchNs, "link", "set", peer, "master", `br${link}`, "up"]);
      const eth = `eth${link}`;
      await sh(["ip", "-n", netns, "link", "set", "vdntmp", "name", eth]);
      await sh(["ip", "-n", netns, "addr", "add", `${ipv4(link)}.${index}/24`, "dev", eth]);
      await sh([
        "ip",
        "-n",
        netns,
        "addr",
        "add",
        `fd00:${net}:${link}::${index}/64`,
        "dev",
        eth,
        "nodad",
      ]);
      await sh(["ip", "-n", netns, "link", "set", eth, "up"]);
    }
    // Multicast leaves by eth0 unless a plug names another interface (if=).
    await sh(["ip", "-n", netns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
    await sh(["ip", "-n", netns, "-6", "route", "add", "ff00::/8", "dev", "eth0", "table", "main"]);
    const host = new Host(netns, `${ipv4(0)}.${index}`, `fd00:${net}:0::${index}`);
    this.hosts.push(host);
    return host;
  }

  /** Kills every process started in the hosts and deletes the namespaces. */
  async dispose(): Promise<void> {
    for (const netns of this.#namespaces) await killNamespaceProcesses(netns);
    for (const host of this.hosts) {
      for (const process of host.processes) await process.stop("SIGKILL").catch(() => {});
    }
    for (const netns of this.#namespaces) await removeNamespace(netns);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/** How long the processes of a namespace have to end on SIGTERM before they are killed. */
const TERM_GRACE_MS = 2000;

async function killNamespaceProcesses(netns: string): Promise<void> {
  const pidsOf = async () =>
    (await run(["ip", "netns", "pids", netns])).stdout.split(/\s+/).filter(Boolean);
  let pids = await pidsOf();
  if (pids.length === 0) return;
  // SIGTERM first: a plug removes its control socket in /run/vdeno as it ends, which SIGKILL
  // would leave behind on the machine.
  await run(["kill", "-TERM", ...pids]);
  for (const until = Date.now() + TERM_GRACE_MS; pids.length > 0 && Date.now() < until;) {
    await sleep(50);
    pids = await pidsOf();
  }
  if (pids.length > 0) await run(["kill", "-9", ...pids]);
}

async function removeNamespace(netns: string): Promise<void> {
  await killNamespaceProcesses(netns);
  await run(["ip", "netns", "del", netns]);
}

/** Removes namespaces of earlier test processes that no longer run. */
async function sweepStale(): Promise<void> {
  const list = (await run(["ip", "netns", "list"])).stdout;
  for (const line of list.split("\n")) {
    const name = line.split(" ")[0];
    const match = new RegExp(`^${PREFIX}(\\d+)x\\d+-`).exec(name);
    if (!match || Number(match[1]) === Deno.pid) continue;
    try {
      Deno.statSync(`/proc/${match[1]}`);
    } catch {
      await removeNamespace(name);
    }
  }
}
