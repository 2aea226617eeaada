/**
 * From a VNL to an open plug: one entry per scheme, so a new scheme is one
 * module and one line here.
 *
 * @module
 */

import type { Plug } from "../core/plug.ts";
import { splitVnl } from "../core/vnl.ts";
import { AgnoPlug } from "./agno.ts";
import { CmdPlug } from "./cmd.ts";
import { NullPlug } from "./null.ts";
import { PcapPlug } from "./pcap.ts";
import { QemuStreamPlug } from "./qemu.ts";
import { StreamPlug } from "./stream.ts";
import { TapPlug } from "./tap.ts";
import { UdpPlug } from "./udp.ts";
import { VdePlug } from "./vde.ts";
import { VdeplugPlug } from "./vdeplug.ts";
import { VlanPlug } from "./vlan.ts";
import { VxlanPlug } from "./vxlan.ts";
import { VxvdePlug } from "./vxvde.ts";

/**
 * Opens a plug from the text after `scheme://`. A scheme that nests another
 * VNL (agno) opens it with `open`, so no scheme imports this registry.
 */
export type SchemeOpener = (vnl: string, rest: string, open: (vnl: string) => Plug) => Plug;

const schemes: Record<string, SchemeOpener> = {
  vxvde: (vnl, rest) => new VxvdePlug(vnl, rest),
  vxlan: (vnl, rest) => new VxlanPlug(vnl, rest),
  tap: (vnl, rest) => new TapPlug(vnl, rest),
  pcap: (vnl, rest) => new PcapPlug(vnl, rest),
  udp: (vnl, rest) => new UdpPlug(vnl, rest),
  qemu: (vnl, rest) => new QemuStreamPlug(vnl, rest),
  agno: (vnl, rest, open) => new AgnoPlug(vnl, rest, open),
  vde: (vnl, rest) => new VdePlug(vnl, rest),
  cmd: (vnl, rest) => new CmdPlug(vnl, rest),
  null: (vnl, rest) => new NullPlug(vnl, rest),
  vlan: (vnl, rest, open) => new VlanPlug(vnl, rest, open),
  vdeplug: (vnl, rest) => new VdeplugPlug(vnl, rest, schemeNames()),
};

/** The schemes vdeno can open. */
export function schemeNames(): string[] {
  return Object.keys(schemes);
}

/**
 * Opens the network a VNL names; throws a VnlError or Error with one clear
 * line. vdeno's own schemes come first; any other goes to libvdeplug, whose
 * plugins may know it.
 */
export function openPlug(vnl: string): Plug {
  const { scheme, rest } = splitVnl(vnl);
  const open = schemes[scheme];
  if (!open) return new VdeplugPlug(vnl, `${scheme}://${rest}`, schemeNames());
  return open(vnl, rest, openPlug);
}

/** One end of a cable: a VNL to open, a byte stream on descriptors, or an open TAP descriptor. */
export type EndSpec =
  | { vnl: string }
  | { stream: { name: string; readFd: number; writeFd: number; owned: boolean } }
  | { tap: { name: string; fd: number } };

/** Opens one end of a cable. */
export function openEnd(end: EndSpec): Plug {
  if ("vnl" in end) return openPlug(end.vnl);
  if ("tap" in end) return new TapPlug(`tap://${end.tap.name}`, end.tap.name, end.tap.fd);
  const { name, readFd, writeFd, owned } = end.stream;
  return new StreamPlug(name, readFd, writeFd, owned);
}
