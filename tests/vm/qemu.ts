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
import { RESULT_PREFIX, type VmImage } from "../../app/vm/image.ts";
import { qemuCommand, type VmOptions } from "../../app/vm/qemu.ts";

export type { VmOptions };

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
