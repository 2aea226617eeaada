/**
 * TAP interfaces through /dev/net/tun and the TUNSETIFF ioctl.
 *
 * @module
 */

import { O_CLOEXEC, O_NONBLOCK } from "./abi.ts";
import { closeQuietly, cString, Errno, errno, libc, strerror } from "./libc.ts";
import { fileInfo, getEnv, kernelVersion } from "./os.ts";

const O_RDWR = 0o2;
const TUNSETIFF = 0x400454can;
const TUNGETIFF = 0x800454d2n;
const TUNSETOFFLOAD = 0x400454d0n;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUN_F_CSUM = 0x01n;
const TUN_F_TSO4 = 0x02n;
const TUN_F_TSO6 = 0x04n;
const TUN_F_TSO_ECN = 0x08n;
const TUN_F_USO4 = 0x20n;
const TUN_F_USO6 = 0x40n;
const IFNAMSIZ = 16;

/** What {@linkcode openTap} returns: the descriptor and the name the kernel gave. */
export interface OpenedTap {
  fd: number;
  name: string;
}

/**
 * Opens the TAP interface `name`, creating it when it does not exist and the
 * caller may (CAP_NET_ADMIN). The descriptor is non-blocking.
 *
 * Each frame read or written carries a virtio-net header first, and the
 * interface offers checksum, TCP and (Linux 6.2 and later) UDP segmentation
 * offload: the kernel then hands over up to 64 KB of one TCP stream, or of a
 * UDP GSO message, in a single read instead of ~45 frames, each with a pass
 * through its stack. `TapPlug` cuts such super-frames into ordinary frames,
 * so peers see nothing of it. `ethtool -K NAME tso off tx off` turns the
 * offloads off from outside.
 */
export function openTap(name: string, tunDevice = "/dev/net/tun"): OpenedTap {
  if (new TextEncoder().encode(name).length >= IFNAMSIZ) {
    throw new Error(`Cannot open tap://${name}: interface names have at most 15 bytes`);
  }
  const fd = libc.open(cString(tunDevice), O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) {
    const code = errno();
    const hint = code === Errno.EACCES
      ? ` (it is mode ${modeOf(tunDevice)}; make it 0666 as most distributions do, or run as root)`
      : code === Errno.ENOENT
      ? " (load the tun module: modprobe tun)"
      : "";
    throw new Error(`Cannot open tap://${name}: ${tunDevice}: ${strerror(code)}${hint}`);
  }
  const request = new Uint8Array(40); // struct ifreq
  cString(name).forEach((byte, i) => request[i] = byte);
  new DataView(request.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
  if (libc.ioctl(fd, TUNSETIFF, request) < 0) {
    const code = errno();
    closeQuietly(fd);
    const hint = code === Errno.EPERM
      ? ": not permitted; run as root, or create it for your user first: " +
        `ip tuntap add mode tap name ${name} user ${getEnv("USER") ?? "USER"}`
      : code === Errno.EBUSY
      ? ": the interface is busy (another process holds it, or it is not a TAP)"
      : code === Errno.EINVAL
      ? ": an interface of that name exists and is not a TAP"
      : `: ${strerror(code)}`;
    throw new Error(`Cannot open tap://${name}${hint}`);
  }
  setTapOffloads(fd, true);
  const terminator = request.indexOf(0);
  const actual = new TextDecoder().decode(
    request.subarray(0, terminator < 0 ? IFNAMSIZ : terminator),
  );
  return { fd, name: actual };
}

/** Whether the TAP behind `fd` still exists (TUNGETIFF fails once it was deleted). */
export function tapAttached(fd: number): boolean {
  const request = new Uint8Array(40);
  return libc.ioctl(fd, TUNGETIFF, request) >= 0;
}

/** Whether frames on the TAP behind `fd` carry a virtio-net header (IFF_VNET_HDR). */
export function tapHasVnetHeader(fd: number): boolean {
  const request = new Uint8Array(40);
  if (libc.ioctl(fd, TUNGETIFF, request) < 0) return false;
  return (new DataView(request.buffer).getUint16(IFNAMSIZ, true) & IFF_VNET_HDR) !== 0;
}

/**
 * Offers checksum, TCP segmentation and (Linux 6.2 and later) UDP
 * segmentation offload on the TAP (on), or withdraws them (off: a persistent
 * TAP keeps its features after we close it, and the next program to open it
 * may not expect super-frames).
 */
export function setTapOffloads(fd: number, on: boolean): void {
  if (!on) {
    libc.ioctl_value(fd, TUNSETOFFLOAD, 0n);
    return;
  }
  const tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
  if (
    tapTakesUdpSegments() && libc.ioctl_value(fd, TUNSETOFFLOAD, tcp | TUN_F_USO4 | TUN_F_USO6) >= 0
  ) {
    return;
  }
  if (libc.ioctl_value(fd, TUNSETOFFLOAD, tcp) < 0) {
    // Not fatal: without offloads the TAP simply hands over ordinary frames.
    libc.ioctl_value(fd, TUNSETOFFLOAD, 0n);
  }
}

/**
 * Whether a TAP takes UDP super-datagrams on write (a virtio-net header of
 * gso_type GSO_UDP_L4, which the kernel cuts apart) and may hand them over on
 * read (USO): Linux 6.2 and later. An older kernel refuses the write, and
 * every datagram in it would be lost.
 */
export function tapTakesUdpSegments(): boolean {
  if (udpSegments === undefined) {
    const [major, minor] = kernelVersion();
    udpSegments = major > 6 || (major === 6 && minor >= 2);
  }
  return udpSegments;
}

/** {@linkcode tapTakesUdpSegments}, once known: the kernel does not change under a process. */
let udpSegments: boolean | undefined;

function modeOf(path: string): string {
  try {
    return "0" + ((fileInfo(path)?.mode ?? 0) & 0o777).toString(8);
  } catch {
    return "unknown";
  }
}
