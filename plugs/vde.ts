/**
 * `vde://[PATH][[OPTIONS]]`: a port of a classic `vde_switch` (Debian's
 * `vde2`), spoken to directly, as vdeplug4's libvdeplug_vde does, so vdeno
 * joins a switch without libvdeplug.
 *
 * PATH is the switch's directory (`vde_switch -s PATH`); without it, the
 * switch's defaults /var/run/vde.ctl then /tmp/vde.ctl. OPTIONS, in brackets
 * and separated by `/`: a port number or a port group name (`vde:///tmp/sw[3]`,
 * `vde:///tmp/sw[lan]`), or `port=`, `group=` (the group that may use our
 * data socket), `mode=` (its octal mode; default 0700).
 *
 * The handshake: a stream connection to the switch's control socket
 * (PATH/ctl, or PATH/GROUP for a port group) carries one request, naming a
 * datagram socket we bound beside it; the switch answers with the address of
 * its own datagram socket for our port. Frames then go one per datagram
 * between the two; the control connection stays open, and the switch closing
 * it ends the plug.
 *
 * @module
 */

import { closeQuietly, Errno, SystemError } from "../ffi/libc.ts";
import { changeGroup, realPath, removeFile, userId } from "../ffi/os.ts";
import {
  connectTo,
  connectUnix,
  datagramSocketAt,
  readWithin,
  SOCKADDR_UN_SIZE,
  unixSocketAddress,
  unixSocketPath,
  writeAll,
} from "../ffi/unix.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { ETH_HEADER, type FrameBatch, MAX_FRAME } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";
import { groupId, splitQuoted, VnlError } from "../core/vnl.ts";
import { datagramVectors, sendEach } from "./_datagrams.ts";

/** Where a switch started without -s listens, in the order vdeplug4 tries them. */
const DEFAULT_SWITCHES = ["/var/run/vde.ctl", "/tmp/vde.ctl"];
/** Where the data socket goes when the switch's directory refuses it. */
const FALLBACK_DIRECTORIES = ["/var/run", "/var/tmp", "/tmp"];
const SWITCH_MAGIC = 0xfeedface;
const REQUEST_VERSION = 3;
const REQ_NEW_CONTROL = 0;
const REQ_NEW_PORT0 = 1;
/** The longest port description a switch keeps (vdeplug4's MAXDESCR). */
const MAX_DESCRIPTION = 128;
const ANSWER_TIMEOUT_MS = 5000;

/** A parsed vde:// VNL. */
export interface VdeConfig {
  /** The switch's directory as given; "" for the defaults. */
  path: string;
  /** A port group name, or undefined. */
  portGroup?: string;
  /** The port asked for: 0 for any, -1 for port 0, n for port n. */
  port: number;
  /** The group given access to the data socket, or undefined. */
  group?: number;
  /** The data socket's mode. */
  mode: number;
}

const OPTION_NAMES = ["port", "portgroup", "group", "mode"] as const;

/** Parses the text after `vde://`, with vdeplug4's rules. */
export function parseVde(rest: string): VdeConfig {
  const open = indexOutsideQuotes(rest, "[");
  const close = rest.lastIndexOf("]");
  if (open >= 0 && close < open) {
    throw new VnlError(
      `Missing "]" in vde:// VNL; expected vde://PATH[PORT], e.g. vde:///tmp/sw[3]`,
    );
  }
  const path = splitQuoted(open < 0 ? rest : rest.slice(0, open), "").join("");
  const values: Partial<Record<typeof OPTION_NAMES[number], string>> = {};
  const elements = open < 0 ? [] : splitQuoted(rest.slice(open + 1, close), "/");
  for (const element of elements) {
    if (element === "") continue;
    const equals = element.indexOf("=");
    const key = equals < 0 ? element : element.slice(0, equals);
    const name = OPTION_NAMES.find((candidate) => candidate.startsWith(key));
    if (name !== undefined) values[name] = equals < 0 ? "" : element.slice(equals + 1);
    else if (equals < 0) values.port = element;
    else {
      throw new VnlError(
        `Unknown key in vde:// VNL: ${key}; valid options are a port number or group name, ` +
          OPTION_NAMES.join(", "),
      );
    }
  }
  const config: VdeConfig = { path, port: 0, mode: 0o700 };
  const portText = values.portgroup ?? values.port;
  if (portText !== undefined && portText !== "") {
    if (/^\d+$/.test(portText)) {
      const port = Number(portText);
      if (port > 0xffffff) {
        throw new VnlError(`Bad port in vde:// VNL: ${portText}; expected a port number or name`);
      }
      config.port = port === 0 ? -1 : port;
    } else config.portGroup = portText;
  }
  if (values.group !== undefined) config.group = groupId(values.group, "group in vde:// VNL");
  if (values.mode !== undefined) {
    if (!/^[0-7]{1,4}$/.test(values.mode)) {
      throw new VnlError(
        `Bad mode in vde:// VNL: ${JSON.stringify(values.mode)}; expected octal, e.g. 0770`,
      );
    }
    config.mode = parseInt(values.mode, 8);
  }
  return config;
}

function indexOutsideQuotes(text: string, wanted: string): number {
  let quote = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) quote = c === quote ? "" : quote;
    else if (c === "'" || c === '"') quote = c;
    else if (c === "\\") i++;
    else if (c === wanted) return i;
  }
  return -1;
}

/** The request a switch's control socket takes (struct request_v3, packed, host order). */
function request(type: number, dataSocket: Uint8Array, description: string) {
  const text = new TextEncoder().encode(description).subarray(0, MAX_DESCRIPTION - 1);
  const bytes = new Uint8Array(12 + SOCKADDR_UN_SIZE + text.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, SWITCH_MAGIC, true);
  view.setUint32(4, REQUEST_VERSION, true);
  view.setUint32(8, type, true);
  bytes.set(dataSocket.subarray(0, SOCKADDR_UN_SIZE), 12);
  bytes.set(text, 12 + SOCKADDR_UN_SIZE);
  return bytes;
}

/** Connects to the switch's control socket: the descriptor, and whether it is the generic one. */
function connectControl(directory: string, config: VdeConfig): { fd: number; generic: boolean } {
  if (config.portGroup !== undefined) {
    try {
      return { fd: connectUnix(`${directory}/${config.portGroup}`), generic: false };
    } catch {
      // No such port group socket: the generic control socket takes the request.
    }
  }
  return { fd: connectUnix(`${directory}/ctl`), generic: true };
}

/** Binds our data socket beside the switch, or in a fallback directory. */
function bindDataSocket(directory: string, mode: number): { fd: number; path: string } {
  let lastError: unknown;
  for (const [index, place] of [directory, ...FALLBACK_DIRECTORIES].entries()) {
    for (let sequence = 0; sequence < 1000; sequence++) {
      const name = `${String(Deno.pid).padStart(5, "0")}-${String(sequence).padStart(5, "0")}`;
      const path = index === 0 ? `${place}/.${name}` : `${place}/vde.${name}`;
      try {
        return { fd: datagramSocketAt(path, mode), path };
      } catch (error) {
        lastError = error;
        if (!(error instanceof SystemError && error.code === Errno.EADDRINUSE)) break;
      }
    }
  }
  throw lastError;
}

/** A port of a vde_switch. */
export class VdePlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  readonly config: VdeConfig;
  /** The switch's directory, resolved. */
  readonly directory: string;
  readonly #dataFd: number;
  readonly #controlFd: number;
  readonly #vectors = datagramVectors(0);
  #closed = false;

  constructor(vnl: string, rest: string) {
    this.vnl = vnl;
    const config = this.config = parseVde(rest);
    let control: { fd: number; generic: boolean } | undefined;
    let directory = "";
    const tried: string[] = [];
    for (const candidate of config.path === "" ? DEFAULT_SWITCHES : [config.path]) {
      try {
        directory = realPath(candidate);
        control = connectControl(directory, config);
        break;
      } catch (error) {
        tried.push((error as Error).message);
      }
    }
    if (!control) {
      throw new Error(`Cannot open ${vnl}: no vde_switch answers: ${tried.join("; ")}`);
    }
    this.directory = directory;
    let data: { fd: number; path: string } | undefined;
    try {
      data = bindDataSocket(directory, config.mode);
      if (config.group !== undefined) changeGroup(data.path, config.group);
      const type = control.generic && config.port !== 0
        ? (config.port < 0 ? REQ_NEW_PORT0 : REQ_NEW_CONTROL + config.port * 256)
        : REQ_NEW_CONTROL;
      const description = `vdeno user=${userId()} pid=${Deno.pid}`;
      if (!writeAll(control.fd, request(type, unixSocketAddress(data.path), description))) {
        throw new Error("the switch closed the control connection");
      }
      const answer = readWithin(control.fd, SOCKADDR_UN_SIZE, ANSWER_TIMEOUT_MS);
      if (!answer || answer.length < 3) {
        throw new Error(
          config.port !== 0 || config.portGroup !== undefined
            ? "the switch refused the port (taken, or no such port or group)"
            : "the switch did not answer",
        );
      }
      const switchSocket = new Uint8Array(SOCKADDR_UN_SIZE);
      switchSocket.set(answer);
      connectTo(data.fd, switchSocket, `connect ${unixSocketPath(switchSocket)}`);
    } catch (error) {
      if (data) closeQuietly(data.fd);
      closeQuietly(control.fd);
      throw new Error(`Cannot open ${vnl}: ${(error as Error).message}`);
    } finally {
      // Once connected the switch needs the name no more; the socket stays ours.
      if (data) removeQuietly(data.path);
    }
    this.#dataFd = data.fd;
    this.#controlFd = control.fd;
    this.fds = [data.fd, control.fd];
  }

  // Frames go one per datagram with no header: datagrams start at each slot's frame.
  receive(batch: FrameBatch, readyMask: number): boolean {
    // The switch never speaks on the control connection after the handshake: input there is its end.
    if (readyMask & 2) return false;
    const first = batch.count;
    if (!(readyMask & 1) || first >= batch.capacity) return true;
    const vector = this.#vectors.of(batch);
    const received = vector.receiveInto(this.#dataFd, first, batch.capacity - first, MAX_FRAME + 1);
    if (received <= 0) {
      if (received < 0) this.counters[Counter.dropMalformed]++;
      return true;
    }
    const counters = this.counters;
    for (let i = first; i < first + received; i++) {
      const length = vector.length(i);
      batch.lengths[i] = 0;
      if (length < ETH_HEADER) counters[Counter.dropTooShort]++;
      else if (length > MAX_FRAME || vector.truncated(i)) counters[Counter.dropTooLong]++;
      else {
        batch.lengths[i] = length;
        counters[Counter.framesIn]++;
        counters[Counter.bytesIn] += length;
      }
    }
    batch.count = first + received;
    return true;
  }

  send(batch: FrameBatch): void {
    // A connected socket: no destination name. It blocks while the switch's queue is full, as
    // vde_plug's does: backpressure, not loss.
    sendEach(this.#dataFd, this.#vectors.of(batch), batch, this.counters, 0, 0);
  }

  describe(): Record<string, unknown> {
    return {
      switch: this.directory,
      ...(this.config.port > 0 ? { port: this.config.port } : {}),
      ...(this.config.portGroup ? { portGroup: this.config.portGroup } : {}),
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#dataFd);
    closeQuietly(this.#controlFd);
  }
}

function removeQuietly(path: string): void {
  try {
    removeFile(path);
  } catch {
    // Cleanup is best effort.
  }
}
