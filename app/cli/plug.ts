/**
 * `vdeno plug`: vde_plug's command line. Two VNLs make a cable between two
 * networks; one VNL carries frames as a byte stream on stdin/stdout; `VNL =
 * COMMAND ...` carries that stream on a command's stdin/stdout.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { closeQuietly } from "../../ffi/libc.ts";
import { readInto, silence } from "../../ffi/io.ts";
import { SIGHUP, SIGINT, SignalDescriptor, SIGTERM } from "../../ffi/signals.ts";
import {
  createPrivateFile,
  environment,
  fileInfo,
  getEnv,
  removeFile,
  writeFully,
} from "../../ffi/os.ts";
import { openDevNull, pipe, reap, signalProcess, spawn, waitBlocking } from "../../ffi/spawn.ts";
import { cableReport, ControlServer, reloadPlugs } from "../control.ts";
import { MetricsServer } from "../metrics.ts";
import { notifyServiceManager } from "../notify.ts";
import { type CableEnd, runCable } from "../../core/cable.ts";
import { type EndSpec, openEnd } from "../../plugs/open.ts";
import { PcapWriter } from "../../core/pcap.ts";
import type { Plug } from "../../core/plug.ts";
import { enableSyslog, logEvent, setLogLevel } from "../../core/log.ts";
import { keyVariables } from "../../plugs/seal.ts";
import {
  childEnvironment,
  DAEMON_CHILD_VARIABLE,
  restartForDataPath,
  selfCommand,
} from "../self.ts";
import { UsageError } from "./usage.ts";

export const PLUG_USAGE = `Usage:
  vdeno plug [OPTIONS] VNL VNL             connect two networks
  vdeno plug [OPTIONS] VNL                 frames as a stream on stdin/stdout
  vdeno plug [OPTIONS] VNL = COMMAND ...   the stream on a command's stdin/stdout

A VNL names a network: vxvde://239.0.0.1, tap://tap0, vde:///tmp/sw, slirp://,
"vlan://5{vxvde://}", "cmd://ssh host vde_plug vxvde://", ... (README: VNLs)

Options:
  -d, --daemon             run in the background once the plugs are open
  -p, --pidfile FILE       write the process id to FILE (removed on exit)
  -n, --name NAME          name for 'vdeno status' (default plug-PID)
  -c, --capture FILE       write every frame crossing the plug to a pcap file
      --metrics ADDR:PORT  serve the counters for Prometheus at http://ADDR:PORT/metrics
  -l, --log                log start and stop to syslog, as vde_plug -l
      --log-level LEVEL    error, warn, info or debug (default warn)
  -h, --help               show this help`;

/** The signals that stop a plug cleanly, saying goodbye to the network. */
const STOP_SIGNALS = [SIGINT, SIGTERM, SIGHUP];

/** Runs `vdeno plug`; resolves to the exit code. */
export async function plugCommand(args: string[]): Promise<number> {
  const equals = args.indexOf("=");
  const own = equals < 0 ? args : args.slice(0, equals);
  const command = equals < 0 ? undefined : args.slice(equals + 1);
  const { values, positionals } = parseArgs({
    args: own,
    options: {
      daemon: { type: "boolean", short: "d" },
      pidfile: { type: "string", short: "p" },
      log: { type: "boolean", short: "l" },
      "log-level": { type: "string" },
      name: { type: "string", short: "n" },
      capture: { type: "string", short: "c" },
      metrics: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    console.log(PLUG_USAGE);
    return 0;
  }
  if (values["log-level"]) setLogLevel(values["log-level"]);
  if (values.log) enableSyslog();
  if (positionals.length === 0 || positionals.length > 2) {
    throw new UsageError("plug takes one or two VNLs");
  }
  if (command !== undefined && (positionals.length !== 1 || command.length === 0)) {
    throw new UsageError("use: vdeno plug VNL = COMMAND [ARGS...]");
  }
  if (values.daemon && getEnv(DAEMON_CHILD_VARIABLE) !== "1") return daemonize(args);

  // The cable waits in poll() on this thread and hears signals through a
  // signalfd, which needs them blocked in every thread: start afresh so.
  // --metrics answers from a Worker.
  restartForDataPath(STOP_SIGNALS, Boolean(values.metrics));
  const signals = new SignalDescriptor(STOP_SIGNALS);
  const ends: EndSpec[] = [{ vnl: positionals[0] }];
  let childPid = -1;
  const plugs: Plug[] = [];
  let capture: PcapWriter | undefined;
  let control: ControlServer | undefined;
  let metrics: MetricsServer | undefined;
  try {
    if (positionals.length === 2) ends.push({ vnl: positionals[1] });
    else if (command) {
      const toChild = pipe(), fromChild = pipe();
      try {
        childPid = spawn(command, {
          descriptors: { 0: toChild.read, 1: fromChild.write },
          env: childEnvironment(keyVariables(positionals)),
        });
      } finally {
        closeQuietly(toChild.read);
        closeQuietly(fromChild.write);
      }
      ends.push({
        stream: {
          name: `= ${command.join(" ")}`,
          readFd: fromChild.read,
          writeFd: toChild.write,
          owned: true,
        },
      });
    } else {
      ends.push({ stream: { name: "stdio", readFd: 0, writeFd: 1, owned: false } });
    }
    // The cable runs on this thread: a worker would cost a second V8 isolate
    // (~14 MB) for nothing, since poll() waits on the control socket too.
    for (const end of ends) plugs.push(openEnd(end));
    if (values.capture) capture = new PcapWriter(values.capture);
    const startedAt = new Date();
    const name = values.name ?? `plug-${Deno.pid}`;
    control = ControlServer.start(
      name,
      () => cableReport(name, startedAt, plugs),
      () => reloadPlugs(name, plugs),
    );
    if (values.metrics !== undefined) {
      metrics = await MetricsServer.start(values.metrics);
      metrics.add(plugs.map((plug) => ({ name, vnl: plug.vnl, counters: plug.counters })));
    }
    if (values.pidfile) {
      try {
        const fd = createPrivateFile(values.pidfile);
        try {
          writeFully(fd, new TextEncoder().encode(`${Deno.pid}\n`), values.pidfile);
        } finally {
          closeQuietly(fd);
        }
      } catch (error) {
        // Deno's own message names neither the option nor the file's purpose.
        throw new Error(`Cannot write pidfile ${values.pidfile}: ${(error as Error).message}`);
      }
    }
    if (getEnv(DAEMON_CHILD_VARIABLE) === "1") detachFromParent();
    const names = plugs.map((plug) => plug.vnl).join(" <-> ");
    logEvent(`plug started: ${names}`);
    notifyServiceManager("READY=1", `STATUS=Forwarding ${names}`);
    const server = control;
    let end: CableEnd;
    try {
      end = runCable(plugs[0], plugs[1], {
        capture,
        watch: {
          fds: [server.fd, signals.fd],
          onReady: (fd) => {
            if (fd === server.fd) server.serve();
            return fd !== signals.fd || signals.take() === 0;
          },
        },
      });
    } catch (error) {
      end = { kind: "ended", plugIndex: -1, reason: (error as Error).message };
    }
    notifyServiceManager("STOPPING=1");
    logEvent(`plug stopped: ${end.kind === "stopped" ? "on a signal" : end.reason}`);

    if (end.kind === "ended" && childPid > 0) {
      closePlugs(plugs, capture);
      const status = await childExit(childPid);
      childPid = -1;
      if (status.code !== 0) {
        console.error(`vdeno plug: the command ${command![0]} ${describeStatus(status)}`);
        return 1;
      }
      return 0;
    }
    if (end.kind === "ended" && end.reason !== "end of input") {
      console.error(`vdeno plug: ${end.reason}`);
      return 1;
    }
    return 0;
  } finally {
    // Closing says goodbye to the network before anything slower happens.
    closePlugs(plugs, capture);
    control?.close();
    metrics?.close();
    signals.close();
    if (childPid > 0) {
      signalProcess(childPid, SIGTERM);
      await childExit(childPid);
    }
    if (values.pidfile) {
      try {
        // Only the file this plug wrote: not what someone put there since.
        if (fileInfo(values.pidfile, false)?.isFile) removeFile(values.pidfile);
      } catch {
        // Already gone: nothing to clean.
      }
    }
  }
}

function closePlugs(plugs: Plug[], capture: PcapWriter | undefined): void {
  for (const plug of plugs) plug.close();
  capture?.close();
}

async function childExit(pid: number) {
  for (let waited = 0;; waited += 20) {
    const status = reap(pid);
    if (status) return status;
    if (waited === 2000) signalProcess(pid, SIGTERM);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function describeStatus(status: { code: number; signal?: number }): string {
  return status.signal !== undefined
    ? `was killed by signal ${status.signal}`
    : `exited with status ${status.code}`;
}

/**
 * vde_plug -d forks after parsing; Deno cannot fork, so the daemon is a
 * detached copy of this command. Its stderr tells the parent whether the
 * plugs opened: "ready", or the error to print.
 */
function daemonize(args: string[]): number {
  const stderr = pipe();
  const devNull = openDevNull();
  let pid: number;
  try {
    pid = spawn([...selfCommand(), "plug", ...args], {
      descriptors: { 0: devNull, 1: devNull, 2: stderr.write },
      env: { ...environment(), [DAEMON_CHILD_VARIABLE]: "1" },
      newSession: true,
    });
  } finally {
    closeQuietly(devNull);
    closeQuietly(stderr.write);
  }
  let text = "";
  try {
    const chunk = new Uint8Array(4096);
    const decoder = new TextDecoder();
    while (!text.includes("\n")) {
      const count = readInto(stderr.read, Deno.UnsafePointer.of(chunk), BigInt(chunk.length));
      if (count <= 0) break;
      text += decoder.decode(chunk.subarray(0, count), { stream: true });
    }
  } finally {
    closeQuietly(stderr.read);
  }
  if (text.startsWith("vdeno-daemon-ready")) return 0;
  const status = waitBlocking(pid);
  console.error(text.trim() || `vdeno: the daemon exited with status ${status.code}`);
  return status.code || 1;
}

/** In the daemon: tell the parent all is well, then let go of its stderr. */
function detachFromParent(): void {
  console.error("vdeno-daemon-ready");
  silence(2);
}
