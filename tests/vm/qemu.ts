/**
 * Runs the test VM of `image.ts` under QEMU in a namespace host and reads its
 * serial console: which peers it could ping, and when it is ready to be
 * pinged itself.
 *
 * QEMU runs with TCG (`-accel tcg`), so the tests need no KVM; the guest has
 * one CPU, 256 MB and a virtio NIC on the netdev the caller chooses.
 *
 * @module
 */

import type { Host, Process } from "../_harness.ts";
import { RESULT_PREFIX, type VmImage } from "./image.ts";

/** What the VM is to do, and how its NIC is connected. */
export interface VmOptions {
  /** The guest's address with prefix length, e.g. `10.0.0.21/24`. */
  address: string;
  /** Addresses the guest pings. */
  peers: string[];
  /** The NIC's MAC address. */
  mac: string;
  /** The `-netdev` argument, with `id=net0`, e.g. `vde,id=net0,sock=vxvde://234.0.0.1`. */
  netdev: string;
}

/** The QEMU command line that boots `image` with `options`. */
export function qemuCommand(image: VmImage, options: VmOptions): string[] {
  return [
    "qemu-system-x86_64",
    "-accel",
    "tcg",
    "-m",
    "256",
    "-smp",
    "1",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    image.kernel,
    "-initrd",
    image.initramfs,
    "-append",
    [
      "console=ttyS0",
      "panic=-1",
      "quiet",
      `vdeno.address=${options.address}`,
      `vdeno.peers=${options.peers.join(",")}`,
    ].join(" "),
    "-netdev",
    options.netdev,
    "-device",
    `virtio-net-pci,netdev=net0,mac=${options.mac}`,
  ];
}

/** A running test VM. */
export class TestVm {
  readonly process: Process;

  constructor(host: Host, image: VmImage, options: VmOptions) {
    this.process = host.spawn(qemuCommand(image, options), { stdin: "piped" });
  }

  /** The console output so far (QEMU's stdout and stderr). */
  get console(): string {
    return this.process.stdout + this.process.stderr;
  }

  /**
   * Waits until the guest has pinged every peer (or QEMU ended); returns
   * each peer's result, `ok` or `fail`.
   */
  async pingResults(timeoutMs = 240_000): Promise<Map<string, string>> {
    let exited = false;
    this.process.exited().then(() => exited = true);
    const ready = `${RESULT_PREFIX} ready`;
    await this.process.waitForOutput((text) => exited || text.includes(ready), timeoutMs);
    if (!this.console.includes(ready)) {
      throw new Error(`The VM ended before it was ready:\n${this.console}`);
    }
    const results = new Map<string, string>();
    const pattern = new RegExp(`^${RESULT_PREFIX} ping (\\S+) (ok|fail)\\b`, "gm");
    for (const match of this.console.matchAll(pattern)) results.set(match[1], match[2]);
    return results;
  }

  /** Tells the guest to power off and waits for QEMU to exit (killed if it does not). */
  async powerOff(): Promise<void> {
    try {
      const writer = this.process.child.stdin.getWriter();
      await writer.write(new TextEncoder().encode("poweroff\n"));
      writer.releaseLock();
    } catch {
      // QEMU already gone.
    }
    const timer = setTimeout(() => this.process.stop("SIGKILL"), 20_000);
    await this.process.exited();
    clearTimeout(timer);
  }
}
