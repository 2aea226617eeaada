/**
 * Any VNL libvdeplug knows, opened through vdeplug4's own plugins by FFI:
 * `slirp://`, `vlan://5{vxvde://...}`, `hub://`, `switch://`, third-party
 * plugins, with no code in vdeno. plugs/open.ts sends here every scheme vdeno
 * does not implement itself, and `vdeplug://VNL` forces this path for a scheme
 * vdeno has too (`vdeplug://vde:///tmp/sw` uses libvdeplug_vde, not vdeno's
 * own vde://).
 *
 * Each frame costs one vde_recv or vde_send: what any vdeplug4 tool pays.
 *
 * @module
 */

import { Errno, errno, strerror } from "../ffi/libc.ts";
import { getEnv, listDirectory } from "../ffi/os.ts";
import { POLLHUP, POLLIN, PollSet } from "../ffi/poll.ts";
import { EPROTONOSUPPORT, loadVdeplug, VdeConnection, VdeOpenError } from "../ffi/vdeplug.ts";
import { Counter, newCounters } from "../core/counters.ts";
import { ETH_HEADER, type FrameBatch, MAX_FRAME } from "../core/frames.ts";
import { type Plug, PlugEnded } from "../core/plug.ts";
import { VnlError } from "../core/vnl.ts";

const FRAME_ROOM = BigInt(MAX_FRAME);

/** The Debian package that brings the plugin of each well-known scheme. */
export const PLUGIN_PACKAGES: Readonly<Record<string, string>> = {
  vde: "libvdeplug2",
  vxvde: "libvdeplug2",
  vxlan: "libvdeplug2",
  tap: "libvdeplug2",
  udp: "libvdeplug2",
  cmd: "libvdeplug2",
  hub: "libvdeplug2",
  switch: "libvdeplug2",
  null: "libvdeplug2",
  ptp: "libvdeplug2",
  multi: "libvdeplug2",
  bonding: "libvdeplug2",
  seqpacket: "libvdeplug2",
  slirp: "libvdeplug-slirp",
  vlan: "libvdeplug-vlan",
  agno: "libvdeplug-agno",
  pcap: "libvdeplug-pcap",
  vdesl: "libvdeplug-vdesl",
};

/** Where libvdeplug looks for plugins: $VDEPLUGIN_PATH alone when set, else the system's. */
function pluginDirectories(): string[] {
  const fromEnvironment = getEnv("VDEPLUGIN_PATH");
  if (fromEnvironment !== undefined) return fromEnvironment.split(":").filter(Boolean);
  return [
    "/usr/lib/x86_64-linux-gnu/vdeplug",
    "/usr/lib/aarch64-linux-gnu/vdeplug",
    "/usr/lib/vdeplug",
    "/usr/local/lib/vdeplug",
    "/usr/lib64/vdeplug",
  ];
}

/** The schemes of the libvdeplug plugins installed, sorted. */
export function installedPluginSchemes(): string[] {
  const found = new Set<string>();
  for (const directory of pluginDirectories()) {
    try {
      for (const entry of listDirectory(directory)) {
        const match = /^libvdeplug_(.+)\.so$/.exec(entry);
        if (match) found.add(match[1]);
      }
    } catch {
      // Not there on this system: look in the next one.
    }
  }
  return [...found].sort();
}

/**
 * A network opened by libvdeplug. `vnl` is the VNL as the user wrote it;
 * `target` is what libvdeplug opens (the same, less a `vdeplug://` prefix).
 * `nativeSchemes` are vdeno's own, named when the scheme is unknown.
 */
export class VdeplugPlug implements Plug {
  readonly vnl: string;
  readonly fds: readonly number[];
  readonly counters: Float64Array = newCounters();
  readonly #connection: VdeConnection;
  readonly #dataReady: PollSet;
  #ended = false;

  constructor(vnl: string, target: string, nativeSchemes: readonly string[]) {
    this.vnl = vnl;
    // C would read the VNL only up to the NUL, and open another network than the one named.
    if (target.includes("\0")) {
      throw new VnlError(`A VNL cannot contain a NUL byte: ${JSON.stringify(target)}`);
    }
    const scheme = target.includes("://") ? target.slice(0, target.indexOf("://")) : "vde";
    const loaded = loadVdeplug();
    if ("error" in loaded) {
      throw new VnlError(
        `Unknown VNL scheme ${scheme}://; vdeno knows ${list(nativeSchemes)}, and more through ` +
          `libvdeplug, which cannot be loaded: install Debian package libvdeplug2` +
          (PLUGIN_PACKAGES[scheme] && PLUGIN_PACKAGES[scheme] !== "libvdeplug2"
            ? ` and ${PLUGIN_PACKAGES[scheme]}`
            : ""),
      );
    }
    try {
      this.#connection = VdeConnection.open(loaded.symbols, target, "vdeno");
    } catch (error) {
      if (error instanceof VdeOpenError && error.code === EPROTONOSUPPORT) {
        const plugins = installedPluginSchemes();
        throw new VnlError(
          plugins.includes(scheme)
            ? `Cannot open ${target}: the libvdeplug plugin for ${scheme}:// refused it`
            : PLUGIN_PACKAGES[scheme]
            ? `No libvdeplug plugin for ${scheme}:// is installed: install Debian package ${
              PLUGIN_PACKAGES[scheme]
            }`
            : `Unknown VNL scheme ${scheme}://; vdeno knows ${list(nativeSchemes)}; ` +
              `libvdeplug plugins installed: ${list(plugins)}`,
        );
      }
      throw error;
    }
    const { dataFd, controlFd } = this.#connection;
    this.fds = controlFd >= 0 ? [dataFd, controlFd] : [dataFd];
    this.#dataReady = new PollSet([dataFd]);
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    if (this.#ended) return false;
    // The control descriptor speaks only when the network ends (a switch that quit).
    if (readyMask & 2) {
      this.#ended = true;
      return false;
    }
    if (!(readyMask & 1)) return true;
    const counters = this.counters;
    // The first vde_recv is safe: poll said readable. The next ones only while poll says so again,
    // since a plugin's descriptor may block.
    for (let first = true; batch.count < batch.capacity; first = false) {
      if (!first && !this.#readable()) break;
      const i = batch.count;
      const length = this.#connection.receive(batch.framePointers[i], FRAME_ROOM);
      if (length < 0) {
        const code = errno();
        if (code === Errno.EAGAIN || code === Errno.EINTR) break;
        throw new PlugEnded(`${this.vnl}: ${strerror(code)}`);
      }
      if (length === 0) {
        // A stream at its end reads 0 and hangs up; a plugin that kept a datagram for itself
        // (a vlan tag not ours) may read 0 too, and goes on.
        this.#dataReady.wait(0);
        if (this.#dataReady.events(0) & POLLHUP) {
          this.#ended = true;
          return false;
        }
        break;
      }
      // Plugins answer 1 for a datagram that was not a frame for us (vdeplug4's convention).
      if (length < ETH_HEADER) {
        counters[Counter.dropTooShort]++;
        continue;
      }
      batch.lengths[i] = length;
      batch.count++;
      counters[Counter.framesIn]++;
      counters[Counter.bytesIn] += length;
    }
    return true;
  }

  #readable(): boolean {
    return this.#dataReady.wait(0) > 0 && (this.#dataReady.events(0) & POLLIN) !== 0;
  }

  send(batch: FrameBatch): void {
    const counters = this.counters;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      if (this.#connection.send(batch.framePointers[i], length) < 0) {
        counters[Counter.dropSendError]++;
        continue;
      }
      counters[Counter.framesOut]++;
      counters[Counter.bytesOut] += length;
    }
  }

  describe(): Record<string, unknown> {
    return { through: "libvdeplug" };
  }

  close(): void {
    this.#connection.close();
  }
}

function list(schemes: readonly string[]): string {
  return schemes.length === 0 ? "none" : schemes.map((s) => s + "://").join(", ");
}
