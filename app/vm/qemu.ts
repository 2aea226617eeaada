/**
 * The QEMU command line of the small VM of `image.ts`: TCG (no KVM needed),
 * one CPU, 256 MB, the serial console on stdio and a virtio NIC on the
 * netdev the caller chooses.
 *
 * @module
 */

import type { VmImage } from "./image.ts";

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
