/**
 * `vdeno ns`: a command in network namespaces of its own whose interfaces
 * (`vde0`, `vde1`...) sit on VDE networks, for an ordinary user, like vdens.
 *
 * Two processes, because Deno is multithreaded and unshare(CLONE_NEWUSER)
 * refuses a multithreaded caller: this one opens the VNLs in the caller's
 * network, a helper (`vdeno ns-helper` under `unshare --user --net`) creates
 * the TAPs inside, hands their descriptors back and becomes the command.
 * ARCHITECTURE.md tells the whole design: processes, signals, capabilities
 * and clean-up.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { closeQuietly } from "../../ffi/libc.ts";
import {
  bindMount,
  Capability,
  dropBoundingCapability,
  interfaceUp,
  setHostname,
  setParentDeathSignal,
} from "../../ffi/namespace.ts";
import {
  changeMode,
  fileInfo,
  getEnv,
  readTextFile,
  removeFile,
  userId,
  writeTextFile,
} from "../../ffi/os.ts";
import { PollSet } from "../../ffi/poll.ts";
import { SIGHUP, SIGINT, SignalDescriptor, SIGQUIT, SIGTERM } from "../../ffi/signals.ts";
import {
  becomeProgram,
  ExitDescriptor,
  type ExitStatus,
  reap,
  signalProcess,
  spawn,
} from "../../ffi/spawn.ts";
import { openTap } from "../../ffi/tap.ts";
import { receiveMessage, sendMessage, setCloseOnExec, socketPair } from "../../ffi/unix.ts";
import { DataPlane, ThreadPlane } from "../dataplane.ts";
import { MetricsServer } from "../metrics.ts";
import { notifyServiceManager } from "../notify.ts";
import type { CableEnd } from "../../core/cable.ts";
import { log, setLogLevel } from "../../core/log.ts";
import { keyVariables } from "../../plugs/seal.ts";
import {
  assertWorkersCanStart,
  childEnvironment,
  restartForDataPath,
  selfCommand,
} from "../self.ts";
import { UsageError } from "./usage.ts";

/**
 * Every option of `vdeno ns`, once: the parser, the split between options and
 * the command (which must know the options that take a value) and the help
 * are all made from this table. An option with `value` takes one.
 */
const NS_OPTIONS: Record<string, { short?: string; value?: string; help: string }> = {
  multi: { short: "m", help: "one interface per VNL" },
  iface: { short: "i", value: "PREFIX", help: "interface name prefix (default vde)" },
  resolvaddr: {
    short: "R",
    value: "ADDRS",
    help: "nameservers for /etc/resolv.conf inside, comma separated\n(default $VDE_RESOLVADDR)",
  },
  resolvconf: {
    short: "r",
    value: "FILE",
    help: "a file to use as /etc/resolv.conf inside\n(default $VDE_RESOLVCONF; -R wins over it)",
  },
  hostname: { short: "H", value: "NAME", help: "the hostname inside" },
  sysadm: {
    short: "s",
    help: "let the command keep CAP_SYS_ADMIN (mount, hostname),\nin a mount namespace of its own",
  },
  "log-level": { value: "LEVEL", help: "error, warn, info or debug (default warn)" },
  metrics: {
    value: "ADDR:PORT",
    help:
      "serve the plugs' counters for Prometheus at\nhttp://ADDR:PORT/metrics (in the caller's network)",
  },
  help: { short: "h", help: "show this help" },
};

/** The help's column where descriptions start. */
const HELP_COLUMN = 27;

function optionLines(): string {
  return Object.entries(NS_OPTIONS).map(([name, option]) => {
    const flags = `  ${option.short ? `-${option.short}, ` : "    "}--${name}` +
      (option.value ? ` ${option.value}` : "");
    const [first, ...more] = option.help.split("\n");
    return [
      flags.padEnd(HELP_COLUMN) + first,
      ...more.map((line) => " ".repeat(HELP_COLUMN) + line),
    ]
      .join("\n");
  }).join("\n");
}

export const NS_USAGE = `Usage:
  vdeno ns [OPTIONS] [VNL [COMMAND [ARGS...]]]
  vdeno ns -m [OPTIONS] VNL [VNL...] [-- COMMAND [ARGS...]]

Runs COMMAND (default $SHELL) in new user, network and UTS namespaces, as root
inside, with interface vde0 on the network VNL (vde0, vde1... with -m). Without
a VNL, or with - or no, the namespace has loopback only. Works without root.

Options:
${optionLines()}

The exit status is the command's (128+N if signal N killed it). Without root,
creating the interfaces needs /dev/net/tun to be mode 0666, as most
distributions ship it.`;

/** The hidden command that runs inside the namespaces (see the module header). */
export const NS_HELPER = "ns-helper";
/** The descriptor on which the helper finds its end of the socket pair. */
const CHANNEL_FD = 3;
const VALUED = Object.entries(NS_OPTIONS).filter(([, option]) => option.value);
const VALUED_SHORT = new Set(VALUED.map(([, option]) => option.short).filter(Boolean));
const VALUED_LONG = new Set(VALUED.map(([name]) => name));

/** Messages on the socket pair, as JSON. */
type HelperMessage =
  | { type: "taps"; names: string[] } // with the TAP descriptors attached
  | { type: "error"; message: string }
  | { type: "go" };

/** What `vdeno ns` was asked to do. */
interface NsRequest {
  vnls: string[];
  command: string[];
  ifacePrefix: string;
  hostname?: string;
  resolvconf?: string;
  resolvaddr?: string;
  sysadm: boolean;
  metrics?: string;
}

/**
 * Splits options from the rest where getopt's "+" mode would: at the first
 * argument that is not an option, so `vdeno ns VNL ping -c 1 X` leaves `-c` to ping.
 */
function splitOptions(args: string[]): { options: string[]; rest: string[] } {
  let i = 0;
  for (; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") return { options: args.slice(0, i), rest: args.slice(i + 1) };
    if (!arg.startsWith("-") || arg === "-") break;
    if (arg.startsWith("--")) {
      if (VALUED_LONG.has(arg.slice(2))) i++;
      continue;
    }
    for (let c = 1; c < arg.length; c++) {
      if (VALUED_SHORT.has(arg[c])) {
        if (c === arg.length - 1) i++;
        break;
      }
    }
  }
  return { options: args.slice(0, i), rest: args.slice(i) };
}

function parseRequest(args: string[]): NsRequest | undefined {
  const { options, rest } = splitOptions(args);
  const { values: parsed } = parseArgs({
    args: options,
    options: Object.fromEntries(
      Object.entries(NS_OPTIONS).map(([name, option]) => [
        name,
        { type: option.value ? "string" : "boolean", ...(option.short && { short: option.short }) },
      ]),
    ) as Record<string, { type: "string" | "boolean"; short?: string }>,
    strict: true,
  });
  const values = parsed as Record<string, string | boolean | undefined>;
  const text = (name: string) => values[name] as string | undefined;
  if (values.help) return undefined;
  if (text("log-level")) setLogLevel(text("log-level")!);
  let vnls: string[], command: string[];
  if (values.multi) {
    const separator = rest.indexOf("--");
    vnls = separator < 0 ? rest : rest.slice(0, separator);
    command = separator < 0 ? [] : rest.slice(separator + 1);
    if (vnls.length === 0) throw new UsageError("-m needs at least one VNL");
  } else {
    const [vnl, ...tail] = rest;
    vnls = vnl === undefined || vnl === "" || vnl === "-" || vnl === "no" ? [] : [vnl];
    command = tail[0] === "--" ? tail.slice(1) : tail;
  }
  if (command.length === 0) {
    const shell = getEnv("SHELL");
    if (!shell) throw new UsageError("SHELL is not set: name the command to run");
    command = [shell];
  }
  const ifacePrefix = text("iface") ?? "vde";
  const longest = `${ifacePrefix}${Math.max(vnls.length - 1, 0)}`;
  if (new TextEncoder().encode(longest).length > 15) {
    throw new UsageError(`interface name ${longest} is longer than 15 bytes`);
  }
  return {
    vnls,
    command,
    ifacePrefix,
    hostname: text("hostname"),
    resolvaddr: text("resolvaddr") ?? getEnv("VDE_RESOLVADDR"),
    resolvconf: text("resolvconf") ?? getEnv("VDE_RESOLVCONF"),
    sysadm: values.sysadm === true,
    metrics: text("metrics"),
  };
}

/** The path of `program` on PATH, if any. */
function findProgram(program: string): string | undefined {
  for (const directory of (getEnv("PATH") ?? "").split(":")) {
    if (!directory) continue;
    try {
      const info = fileInfo(`${directory}/${program}`);
      if (info?.isFile && (info.mode & 0o111) !== 0) return `${directory}/${program}`;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

function readSysctl(path: string): string | undefined {
  try {
    return readTextFile(path).trim();
  } catch {
    return undefined;
  }
}

/** Why user namespaces cannot be made here, if a setting says so. */
function userNamespacesRefused(): string | undefined {
  if (readSysctl("/proc/sys/user/max_user_namespaces") === "0") {
    return "user namespaces are disabled on this machine (sysctl user.max_user_namespaces is 0)";
  }
  if (userId() === 0) return undefined;
  if (readSysctl("/proc/sys/kernel/unprivileged_userns_clone") === "0") {
    return "unprivileged user namespaces are disabled on this machine " +
      "(sysctl kernel.unprivileged_userns_clone is 0); enable it or run as root";
  }
  if (readSysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") === "1") {
    return "AppArmor restricts unprivileged user namespaces on this machine " +
      "(sysctl kernel.apparmor_restrict_unprivileged_userns is 1)";
  }
  return undefined;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function send(fd: number, message: HelperMessage, descriptors: number[] = []): void {
  sendMessage(fd, encoder.encode(JSON.stringify(message)), descriptors);
}

/**
 * The signals the parent hears through a signalfd: SIGTERM and SIGHUP, which
 * it passes on to the command through the helper, and Ctrl-C's SIGINT and
 * SIGQUIT, which it ignores (the terminal sent them to the command itself).
 */
const PARENT_SIGNALS = [SIGINT, SIGQUIT, SIGTERM, SIGHUP];

/**
 * The helper, and after "go" the command it became, as the parent's poll
 * loops see it: its end as a pidfd, the signals to pass on to it as a
 * signalfd. With one VNL both are among the
 * descriptors the cable's poll waits on, on the main thread, so the parent
 * needs no event loop and no second isolate.
 */
class Helper {
  readonly pid: number;
  /** What to poll: the signalfd, then the pidfd. */
  readonly fds: readonly number[];
  /** How the helper ended, once it has. */
  status: ExitStatus | undefined;
  /** Whether a SIGTERM or SIGHUP was passed on to it. */
  forwarded = false;
  readonly #signals: SignalDescriptor;
  readonly #exit: ExitDescriptor;

  constructor(pid: number, signals: SignalDescriptor) {
    this.pid = pid;
    this.#signals = signals;
    this.#exit = new ExitDescriptor(pid);
    this.fds = [signals.fd, this.#exit.fd];
  }

  /** Handles one of {@linkcode fds} being readable; false once the helper has ended. */
  onReady(fd: number): boolean {
    if (fd === this.#signals.fd) {
      for (let signal = this.#signals.take(); signal !== 0; signal = this.#signals.take()) {
        if (signal !== SIGTERM && signal !== SIGHUP) continue;
        this.forwarded = true;
        signalProcess(this.pid, signal);
      }
    } else if (fd === this.#exit.fd) {
      this.status ??= reap(this.pid);
    }
    return this.status === undefined;
  }

  /**
   * Blocks, passing signals on, until the helper has ended, or with `fd`
   * until that is readable (the socket pair, which the helper's end leaves
   * readable too).
   */
  wait(fd = -1): void {
    const poller = new PollSet([...this.fds, fd]); // poll skips a negative descriptor
    for (;;) {
      if (this.status !== undefined) {
        if (fd < 0) return;
        poller.setEntry(1, -1, 0); // an ended process's pidfd stays readable
      }
      poller.wait(-1);
      if (poller.events(2) !== 0) return;
      for (let i = 0; i < 2; i++) if (poller.events(i) !== 0) this.onReady(this.fds[i]);
    }
  }

  /** Like {@linkcode wait} without `fd`, letting the event loop run meanwhile (Workers). */
  async waitAsync(): Promise<void> {
    const poller = new PollSet(this.fds);
    while (this.status === undefined) {
      await poller.waitAsync(-1);
      for (let i = 0; i < 2; i++) if (poller.events(i) !== 0) this.onReady(this.fds[i]);
    }
  }

  close(): void {
    this.#exit.close();
  }
}

/** Waits for the helper's message, passing signals on; undefined if it exited. */
function receiveFromHelper(
  fd: number,
  helper: Helper,
): { message: HelperMessage; descriptors: number[] } | undefined {
  helper.wait(fd);
  const received = receiveMessage(fd);
  if (!received) return undefined;
  return { message: JSON.parse(decoder.decode(received.data)), descriptors: received.descriptors };
}

/** Runs `vdeno ns`; resolves to the command's exit status. */
export async function nsCommand(args: string[]): Promise<number> {
  const request = parseRequest(args);
  if (!request) {
    console.log(NS_USAGE);
    return 0;
  }
  const unshare = findProgram("unshare");
  if (!unshare) {
    throw new Error("unshare is not on PATH: install util-linux, which vdeno ns needs");
  }
  const refused = userNamespacesRefused();
  if (refused) throw new Error(`Cannot create a user namespace: ${refused}`);
  // Every wait of this process is a poll (with one VNL, the cable's, on this thread), which hears
  // signals through a signalfd: that needs them blocked in every thread, so start afresh so.
  const inWorkers = request.vnls.length > 1;
  restartForDataPath(PARENT_SIGNALS, inWorkers || Boolean(request.metrics));
  if (inWorkers) assertWorkersCanStart("its data-plane threads");

  const taps = request.vnls.map((_, i) => `${request.ifacePrefix}${i}`);
  const mountNamespace = request.sysadm || request.resolvaddr !== undefined ||
    request.resolvconf !== undefined;
  const helperArgs = ["--parent", String(Deno.pid), ...taps.flatMap((tap) => ["--tap", tap])];
  if (request.hostname !== undefined) helperArgs.push("--hostname", request.hostname);
  if (request.resolvaddr !== undefined) helperArgs.push("--resolvaddr", request.resolvaddr);
  else if (request.resolvconf !== undefined) helperArgs.push("--resolvconf", request.resolvconf);
  if (request.sysadm) helperArgs.push("--sysadm");
  const argv = [
    unshare,
    "--user",
    "--map-root-user",
    "--net",
    "--uts",
    ...(mountNamespace ? ["--mount"] : []),
    "--",
    ...selfCommand(),
    NS_HELPER,
    ...helperArgs,
    "--",
    ...request.command,
  ];

  const signals = new SignalDescriptor(PARENT_SIGNALS);
  let metrics: MetricsServer | undefined;
  let channel = -1;
  let helper: Helper | undefined;
  /** With one VNL: its data plane, on this thread. */
  let plane: ThreadPlane | undefined;
  /** With more: one Worker each. */
  const planes: DataPlane[] = [];
  const running = new Set<DataPlane>();
  let ready = false;
  try {
    // A bad address is reported before any namespace is made.
    if (request.metrics !== undefined) metrics = await MetricsServer.start(request.metrics);
    const [ours, helperEnd] = socketPair();
    channel = ours;
    let helperPid: number;
    try {
      // The helper and the command need no key: the data planes run here.
      helperPid = spawn(argv, {
        descriptors: { [CHANNEL_FD]: helperEnd },
        env: childEnvironment(keyVariables(request.vnls)),
      });
    } finally {
      closeQuietly(helperEnd);
    }
    helper = new Helper(helperPid, signals);
    const received = receiveFromHelper(channel, helper);
    if (!received || received.message.type !== "taps") {
      // Closing the channel tells a helper still waiting for "go" to give up.
      closeQuietly(channel);
      channel = -1;
      helper.wait();
      const status = helper.status!;
      if (received?.message.type === "error") throw new Error(received.message.message);
      if (helper.forwarded) return status.code; // stopped by a signal before the command started
      throw new Error(
        `Cannot create the namespaces: unshare ${
          status.signal ? `was killed by signal ${status.signal}` : `exited with ${status.code}`
        }` + (status.signal ? "" : " (its message is above)"),
      );
    }
    const tapFds = received.descriptors;
    /** How many of `tapFds` a data plane has taken (and closes). */
    let taken = 0;
    try {
      if (tapFds.length !== taps.length) {
        throw new Error(`The helper sent ${tapFds.length} interfaces instead of ${taps.length}`);
      }
      const namespace = { pid: helperPid, command: request.command };
      if (taps.length === 1) {
        taken = 1;
        const name = nsPlugName(taps[0]);
        plane = ThreadPlane.open([{ vnl: request.vnls[0] }, {
          tap: { name: taps[0], fd: tapFds[0] },
        }], { name, namespace });
        metrics?.add(plane.plugs.map((plug) => ({ name, vnl: plug.vnl, counters: plug.counters })));
      } else {
        for (let i = 0; i < taps.length; i++) {
          taken++;
          const started = await DataPlane.start([{ vnl: request.vnls[i] }, {
            tap: { name: taps[i], fd: tapFds[i] },
          }], { name: nsPlugName(taps[i]), namespace });
          planes.push(started);
          running.add(started);
          metrics?.add(started.plugs.map((plug) => ({ ...plug, name: nsPlugName(taps[i]) })));
          started.finished.then((end) => {
            running.delete(started);
            reportEnd(end, taps[i]);
          });
        }
      }
    } catch (error) {
      for (const fd of tapFds.slice(taken)) closeQuietly(fd);
      closeQuietly(channel); // the helper sees the end of the stream and exits
      channel = -1;
      helper.wait();
      throw error;
    }
    send(channel, { type: "go" });
    log("info", `ns started: ${request.command.join(" ")} (namespace pid ${helperPid})`);
    notifyServiceManager("READY=1", `STATUS=Running ${request.command.join(" ")}`);
    ready = true;
    if (plane) {
      const waiting = helper;
      const end = plane.run({ fds: waiting.fds, onReady: (fd) => waiting.onReady(fd) });
      if (end.kind === "ended") {
        plane.close();
        reportEnd(end, taps[0]);
      }
      helper.wait();
    } else {
      await helper.waitAsync();
    }
    const status = helper.status!;
    log("info", `ns stopped: the command exited with status ${status.code}`);
    return status.code;
  } finally {
    if (ready) notifyServiceManager("STOPPING=1");
    plane?.close();
    for (const started of running) started.stop();
    await Promise.all(planes.map((started) => started.finished));
    helper?.close();
    if (channel >= 0) closeQuietly(channel);
    metrics?.close();
    signals.close();
  }
}

/** Says so when a data plane ended with the namespace still there: its network is lost. */
function reportEnd(end: CableEnd, tap: string): void {
  // The TAP side ends when the namespace is gone; only a lost network is news.
  if (end.kind === "ended" && end.plugIndex === 0) {
    console.error(`vdeno ns: ${end.reason}; ${tap} is no longer connected`);
  }
}

/** The name under which the plug of interface `tap` is known to `vdeno status` and metrics. */
function nsPlugName(tap: string): string {
  return `ns-${Deno.pid}-${tap}`;
}

/** Writes a resolv.conf naming `addresses` and binds it over /etc/resolv.conf. */
function bindNameservers(addresses: string): void {
  const lines = addresses.split(",").filter(Boolean).map((address) => `nameserver ${address}\n`);
  const random = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  const path = `${getEnv("TMPDIR") || "/tmp"}/vdeno-ns-resolv-${Deno.pid}-${random}`;
  writeTextFile(path, lines.join(""), { mode: 0o644, createNew: true });
  try {
    changeMode(path, 0o644);
    bindMount(path, "/etc/resolv.conf");
  } finally {
    // The mount holds the file; its name is not needed any more.
    removeFile(path);
  }
}

/**
 * The helper, inside the new namespaces (see the module header); not for
 * people to run. Once the parent says "go" it becomes the command; it
 * returns only when it cannot.
 */
export function nsHelperCommand(args: string[]): number {
  const { values, positionals: command } = parseArgs({
    args,
    options: {
      parent: { type: "string" },
      tap: { type: "string", multiple: true },
      hostname: { type: "string" },
      resolvaddr: { type: "string" },
      resolvconf: { type: "string" },
      sysadm: { type: "boolean" },
    },
    allowPositionals: true,
    strict: true,
  });
  try {
    setCloseOnExec(CHANNEL_FD);
  } catch {
    console.error("vdeno ns-helper: this command is run by vdeno ns, not by hand");
    return 2;
  }
  for (const signal of ["SIGINT", "SIGQUIT"] as const) Deno.addSignalListener(signal, () => {});
  setParentDeathSignal(SIGTERM);
  if (Deno.ppid !== Number(values.parent)) return 1; // the parent is gone already

  const tapFds: number[] = [];
  try {
    interfaceUp("lo");
    if (values.hostname !== undefined) setHostname(values.hostname);
    if (values.resolvaddr !== undefined) bindNameservers(values.resolvaddr);
    else if (values.resolvconf !== undefined) bindMount(values.resolvconf, "/etc/resolv.conf");
    for (const name of values.tap ?? []) tapFds.push(openTap(name).fd);
    if (!values.sysadm) dropBoundingCapability(Capability.SYS_ADMIN);
  } catch (error) {
    for (const fd of tapFds) closeQuietly(fd);
    send(CHANNEL_FD, { type: "error", message: (error as Error).message });
    return 1;
  }
  send(CHANNEL_FD, { type: "taps", names: values.tap ?? [] }, tapFds);
  for (const fd of tapFds) closeQuietly(fd);
  const answer = receiveMessage(CHANNEL_FD);
  if (!answer || JSON.parse(decoder.decode(answer.data)).type !== "go") return 1;

  // The helper becomes the command, so that no runtime of its own stays resident meanwhile: the
  // parent waits for this very process and passes signals on to it.
  try {
    becomeProgram(command);
  } catch (error) {
    console.error(`vdeno ns: ${(error as Error).message}`);
  }
  return 127;
}
