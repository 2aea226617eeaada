/**
 * Setting up the inside of a namespace `vdeno ns` made: the hostname, a file
 * bound over another (resolv.conf), an interface brought up, a capability left
 * out of what the command may hold, and a signal when the parent dies.
 *
 * @module
 */

import { AF_INET, SOCK_CLOEXEC, SOCK_DGRAM } from "./abi.ts";
import { check, closeQuietly, cString, libc } from "./libc.ts";

const MS_BIND = 0x1000n;
const SIOCGIFFLAGS = 0x8913n;
const SIOCSIFFLAGS = 0x8914n;
const IFF_UP = 0x1;
const PR_SET_PDEATHSIG = 1;
const PR_CAPBSET_DROP = 24;

/** Capability numbers from linux/capability.h. */
export const Capability = { SYS_ADMIN: 21 } as const;

/** Sets the hostname of the calling process's UTS namespace. */
export function setHostname(name: string): void {
  const bytes = cString(name);
  check(libc.sethostname(bytes, BigInt(bytes.length - 1)), `Cannot set the hostname ${name}`);
}

/** Bind-mounts `source` over `target` (both files, or both directories). */
export function bindMount(source: string, target: string): void {
  check(
    libc.mount(cString(source), cString(target), null, MS_BIND, null),
    `Cannot bind ${source} over ${target}`,
  );
}

/** Brings the interface `name` up in the calling thread's network namespace. */
export function interfaceUp(name: string): void {
  const fd = check(libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  try {
    const request = new Uint8Array(40); // struct ifreq: name, then flags (short)
    request.set(cString(name));
    check(libc.ioctl(fd, SIOCGIFFLAGS, request), `Cannot read the flags of ${name}`);
    const view = new DataView(request.buffer);
    view.setInt16(16, view.getInt16(16, true) | IFF_UP, true);
    check(libc.ioctl(fd, SIOCSIFFLAGS, request), `Cannot bring ${name} up`);
  } finally {
    closeQuietly(fd);
  }
}

/**
 * Removes a capability from the calling thread's bounding set: programs it
 * starts afterwards cannot hold it, even as root. Capabilities are per thread;
 * spawn from the same thread (the main one) for this to apply.
 */
export function dropBoundingCapability(capability: number): void {
  check(
    libc.prctl(PR_CAPBSET_DROP, BigInt(capability), 0n, 0n, 0n),
    "prctl(PR_CAPBSET_DROP)",
  );
}

/** Asks the kernel to send `signal` to this process when its parent exits. */
export function setParentDeathSignal(signal: number): void {
  check(libc.prctl(PR_SET_PDEATHSIG, BigInt(signal), 0n, 0n, 0n), "prctl(PR_SET_PDEATHSIG)");
}
