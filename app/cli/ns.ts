/**
 * `vdeno ns`: a command in network namespaces of its own whose interfaces
 * (`vde0`, `vde1`...) sit on VDE networks, for an ordinary user, like vdens.
 *
 * Two processes, because Deno is multithreaded and unshare(CLONE_NEWUSER)
 * refuses a multithreaded caller: this one opens the VNLs in the caller's
 * network, a helper (`vdeno ns-helper` under `unshare --user --net`) creates
 * the TAPs inside and hands their descriptors back. ARCHITECTURE.md tells the
 * whole design: processes, signals, capabilities and clean-up.
 *
 * @module
 */

import { SIGHUP, SIGTERM } from "../../ffi/abi.ts";
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
  environment,
  fileInfo,
  getEnv,
  readTextFile,
  removeFile,
  userId,
  writeTextFile,
} from "../../ffi/os.ts";
import { PollSet } from "../../ffi/poll.ts";
import { replaceProcess, signalProcess, spawn, waitFor } from "../../ffi/spawn.ts";
import { openTap } from "../../ffi/tap.ts";
import { receiveMessage, sendMessage, setCloseOnExec, socketPair } from "../../ffi/unix.ts";
import { DataPlane } from "../dataplane.ts";
import { MetricsServer } from "../metrics.ts";
import { notifyServiceManager } from "../notify.ts";
import { log, setLogLevel } from "../../core/log.ts";
import { keyVariables } from "../../plugs/seal.ts";
import {
  assertWorkersCanStart,
  childEnvironment,
  selfCommand,
  withWorkerPermission,
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

/** Waits for the helper's message without blocking the event loop; undefined if it exited. */
async function receiveFromHelper(
  fd: number,
): Promise<{ message: HelperMessage; descriptors: number[] } | undefined> {
  const poller = new PollSet([fd]);
  while ((await poller.waitAsync(1000)) === 0) { /* the helper is still starting */ }
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
  if (request.vnls.length > 0 || request.metrics) {
    // The data planes (and --metrics) are Workers, which need to read vdeno's files.
    const argv = withWorkerPermission();
    if (argv) replaceProcess(argv, environment());
    assertWorkersCanStart("its data-plane threads");
  }
  const unshare = findProgram("unshare");
  if (!unshare) {
    throw new Error("unshare is not on PATH: install util-linux, which vdeno ns needs");
  }
  const refused = userNamespacesRefused();
  if (refused) throw new Error(`Cannot create a user namespace: ${refused}`);

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

  // A bad address is reported before any namespace is made.
  const metrics = request.metrics === undefined
    ? undefined
    : await MetricsServer.start(request.metrics);
  const [channel, helperEnd] = socketPair();
  let channelOpen = true;
  // Closing it tells a helper still waiting for "go" to give up; close once only.
  const closeChannel = () => {
    if (channelOpen) closeQuietly(channel);
    channelOpen = false;
  };
  let helperPid: number;
  try {
    // The helper and the command need no key: the data planes run here.
    helperPid = spawn(argv, {
      descriptors: { [CHANNEL_FD]: helperEnd },
      env: childEnvironment(keyVariables(request.vnls)),
    });
  } catch (error) {
    closeChannel();
    metrics?.close();
    throw error;
  } finally {
    closeQuietly(helperEnd);
  }

  // See the module header: Ctrl-C is for the command, the terminal sends it there itself.
  const ignore = () => {};
  let forwarded = false;
  const forward = (signal: number) => () => {
    forwarded = true;
    signalProcess(helperPid, signal);
  };
  const listeners: [Deno.Signal, () => void][] = [
    ["SIGINT", ignore],
    ["SIGQUIT", ignore],
    ["SIGTERM", forward(SIGTERM)],
    ["SIGHUP", forward(SIGHUP)],
  ];
  for (const [signal, listener] of listeners) Deno.addSignalListener(signal, listener);
  const planes: DataPlane[] = [];
  const running = new Set<DataPlane>();
  let ready = false;
  try {
    const received = await receiveFromHelper(channel);
    if (!received || received.message.type !== "taps") {
      closeChannel();
      const status = await waitFor(helperPid);
      if (received?.message.type === "error") throw new Error(received.message.message);
      if (forwarded) return status.code; // stopped by a signal before the command started
      throw new Error(
        `Cannot create the namespaces: unshare ${
          status.signal ? `was killed by signal ${status.signal}` : `exited with ${status.code}`
        }` + (status.signal ? "" : " (its message is above)"),
      );
    }
    const tapFds = received.descriptors;
    try {
      if (tapFds.length !== taps.length) {
        throw new Error(`The helper sent ${tapFds.length} interfaces instead of ${taps.length}`);
      }
      for (let i = 0; i < taps.length; i++) {
        const plane = await DataPlane.start([{ vnl: request.vnls[i] }, {
          tap: { name: taps[i], fd: tapFds[i] },
        }], {
          name: nsPlugName(taps[i]),
          namespace: { pid: helperPid, command: request.command },
        });
        planes.push(plane);
        running.add(plane);
        metrics?.add(plane.plugs.map((plug) => ({ ...plug, name: nsPlugName(taps[i]) })));
        plane.finished.then((end) => {
          running.delete(plane);
          // The TAP side ends when the namespace is gone; only a lost network is news.
          if (end.kind === "ended" && end.plugIndex === 0) {
            console.error(`vdeno ns: ${end.reason}; ${taps[i]} is no longer connected`);
          }
        });
      }
    } catch (error) {
      for (const fd of tapFds.slice(planes.length)) closeQuietly(fd);
      closeChannel(); // the helper sees the end of the stream and exits
      await waitFor(helperPid);
      throw error;
    }
    send(channel, { type: "go" });
    log("info", `ns started: ${request.command.join(" ")} (namespace pid ${helperPid})`);
    notifyServiceManager("READY=1", `STATUS=Running ${request.command.join(" ")}`);
    ready = true;
    const status = await waitFor(helperPid);
    log("info", `ns stopped: the command exited with status ${status.code}`);
    return status.code;
  } finally {
    if (ready) notifyServiceManager("STOPPING=1");
    for (const plane of running) plane.stop();
    await Promise.all(planes.map((plane) => plane.finished));
    for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
    closeChannel();
    metrics?.close();
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
 * people to run. Resolves to the command's exit status.
 */
export async function nsHelperCommand(args: string[]): Promise<number> {
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

  let pid: number;
  try {
    pid = spawn(command);
  } catch (error) {
    console.error(`vdeno ns: ${(error as Error).message}`);
    return 127;
  }
  for (const [name, number] of [["SIGTERM", SIGTERM], ["SIGHUP", SIGHUP]] as const) {
    Deno.addSignalListener(name, () => signalProcess(pid, number));
  }
  return (await waitFor(pid)).code;
}
