/**
 * `vdeno randmac`: prints a random MAC address for a virtual NIC, like
 * Debian's `randmac`: locally administered (bit 1 of the first byte set), so
 * it cannot clash with a vendor's address, and unicast (bit 0 clear), so a
 * NIC may own it.
 *
 * @module
 */

import { formatMac } from "../../core/frames.ts";
import { positionalsOrHelp, UsageError } from "./usage.ts";

export const RANDMAC_USAGE = `Usage: vdeno randmac [OPTIONS]

Prints a random locally administered unicast MAC address, e.g. for
qemu -device virtio-net-pci,mac=...

Options:
  -h, --help    show this help`;

/**
 * A random locally administered unicast MAC address.
 *
 * @returns six lowercase hex bytes separated by colons
 * @example
 * ```ts
 * const mac = randomMac(); // e.g. "a6:3f:0c:91:5e:d2"
 * ```
 */
export function randomMac(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  bytes[0] = (bytes[0] & 0xfc) | 0x02;
  return formatMac(bytes);
}

/** Runs `vdeno randmac`; resolves to the exit code. */
export function randmacCommand(args: string[]): number {
  const positionals = positionalsOrHelp(args, RANDMAC_USAGE);
  if (positionals === undefined) return 0;
  if (positionals.length > 0) {
    throw new UsageError(`randmac takes no arguments, got ${JSON.stringify(positionals[0])}`);
  }
  console.log(randomMac());
  return 0;
}
