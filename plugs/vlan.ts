/**
 * `vlan://[VLAN][/OPTIONS]{VNL}`: IEEE 802.1Q VLANs around another VNL, with
 * the syntax and behaviour of VDE's vdeplug_vlan plugin (Debian's
 * libvdeplug-vlan), so vdeno and vde_plug members of one VLAN talk. The
 * tagging is done here, at the member, not by a switch: frames this plug
 * sends carry the tag on the inner network, and frames of other VLANs are
 * not delivered.
 *
 * - VLAN: the VLAN this member is on untagged (0, the default: none; 4095:
 *   untagged frames from this member are dropped).
 * - `untag=N` (`u`): untagged frames on the network reach this member tagged
 *   with N, and its frames tagged N leave untagged.
 * - `tag=LIST` (`t`): VLANs this member sees tagged, separated by `:` or `.`;
 *   `A-B` maps its VLAN A to the network's VLAN B and back.
 * - `trunk` (`x`): tagged frames of VLANs not listed pass unchanged.
 * - `qinq` (`q`, `ad`): the 802.1ad tag type 0x88a8 instead of 0x8100.
 *
 * Options also stand in brackets, as the plugin's manual writes them:
 * `vlan://3[untag=4/trunk/tag=10:11-12]{vxvde://234.0.0.1}`. VLAN ids 0, 1
 * and 4095 are reserved: trunks do not carry them.
 *
 * Where vdeplug_vlan's source differs from its manual, vdeno follows the
 * manual: a frame of a `tag=` VLAN arrives at its own length (the plugin
 * returns the size of the whole receive buffer), and a `tag=` list of one
 * one-digit VLAN counts (the plugin miscounts it as empty). A VLAN field
 * that is not a number is an error here, not VLAN 0.
 *
 * @module
 */

import { Counter } from "../core/counters.ts";
import { ETH_HEADER, type FrameBatch, HEADROOM, MAX_FRAME, SLOT_SIZE } from "../core/frames.ts";
import type { Plug } from "../core/plug.ts";
import { parseOptions, splitNested, VnlError } from "../core/vnl.ts";

const TPID_8021Q = 0x8100;
const TPID_8021AD = 0x88a8;
const VLAN_MASK = 0xfff;
const TAG = 4;
const USAGE = "expected vlan://VLAN[/OPTIONS]{VNL}, e.g. vlan://5{vxvde://234.0.0.1}";

/** A VLAN id the plugin forwards on a trunk or after a mapping: not 0, 1 or 4095. */
function usable(vlan: number): boolean {
  return ((vlan + 1) & VLAN_MASK) > 2;
}

/** One entry of `tag=`: this member's VLAN and the network's. */
export interface VlanMapping {
  member: number;
  network: number;
}

/** A parsed vlan:// VNL. */
export interface VlanConfig {
  /** The VLAN seen untagged by this member; 0 for none. */
  untagged: number;
  /** The VLAN untagged network traffic is seen as by this member; 0 for none. */
  untagAs: number;
  tags: VlanMapping[];
  trunk: boolean;
  /** The tag's EtherType: 0x8100, or 0x88a8 with qinq. */
  tpid: number;
  /** The nested VNL. */
  inner: string;
}

const OPTION_NAMES = ["untag", "tag", "x", "trunk", "q", "qinq", "ad"] as const;

function vlanNumber(text: string, what: string): number {
  const trimmed = text.trim();
  const value = /^0[xX][0-9a-fA-F]+$/.test(trimmed)
    ? parseInt(trimmed.slice(2), 16)
    : /^0[0-7]*$/.test(trimmed)
    ? parseInt(trimmed, 8)
    : /^[1-9]\d*$/.test(trimmed)
    ? Number(trimmed)
    : NaN;
  if (!(value >= 0 && value <= VLAN_MASK)) {
    throw new VnlError(`Bad ${what} in vlan:// VNL: ${JSON.stringify(text)}; expected 0 to 4095`);
  }
  return value;
}

/** Parses the text after `vlan://`. */
export function parseVlan(rest: string): VlanConfig {
  const nested = splitNested(rest);
  if (!nested || nested.inner === "") throw new VnlError(`Missing nested VNL; ${USAGE}`);
  let outer = nested.outer;
  const open = outer.indexOf("[");
  if (open >= 0) {
    const close = outer.lastIndexOf("]");
    if (close < open) throw new VnlError(`Missing "]" in vlan:// VNL; ${USAGE}`);
    outer = `${outer.slice(0, open)}/${outer.slice(open + 1, close)}`;
  }
  const { address, options } = parseOptions("vlan", outer, OPTION_NAMES);
  const tags: VlanMapping[] = [];
  for (const token of (options.tag ?? "").split(/[.:]/)) {
    if (token === "") continue;
    const [member, network, extra] = token.split("-");
    if (extra !== undefined) {
      throw new VnlError(`Bad tag in vlan:// VNL: ${token}; expected A or A-B`);
    }
    const from = vlanNumber(member, "tag");
    tags.push({ member: from, network: network === undefined ? from : vlanNumber(network, "tag") });
  }
  return {
    untagged: address === "" ? 0 : vlanNumber(address, "VLAN"),
    untagAs: options.untag === undefined || options.untag === ""
      ? 0
      : vlanNumber(options.untag, "untag"),
    tags,
    trunk: options.x !== undefined || options.trunk !== undefined,
    tpid: options.q !== undefined || options.qinq !== undefined || options.ad !== undefined
      ? TPID_8021AD
      : TPID_8021Q,
    inner: nested.inner,
  };
}

/** A member of VLANs on another network. */
export class VlanPlug implements Plug {
  readonly vnl: string;
  readonly config: VlanConfig;
  readonly inner: Plug;
  readonly fds: readonly number[];
  /** The inner plug's counters; frames of VLANs not ours count as dropWrongHeader. */
  readonly counters: Float64Array;

  /** `openInner` opens the nested VNL: the registry's opener, passed in so vlan need not import it. */
  constructor(vnl: string, rest: string, openInner: (vnl: string) => Plug) {
    this.vnl = vnl;
    this.config = parseVlan(rest);
    this.inner = openInner(this.config.inner);
    this.fds = this.inner.fds;
    this.counters = this.inner.counters;
  }

  get backlog(): boolean {
    return this.inner.backlog ?? false;
  }

  /** The tag takes 4 bytes of what the inner network carries whole. */
  get largestWholeFrame(): number | undefined {
    const inner = this.inner.largestWholeFrame;
    return inner === undefined ? undefined : inner - TAG;
  }

  fitSegmentsTo(size: number): void {
    this.inner.fitSegmentsTo?.(size - TAG);
  }

  /** The VLAN a tagged frame's `vlan` maps to, in the member's direction or the network's; 0: none. */
  #mapped(vlan: number, towardsNetwork: boolean): number {
    for (const mapping of this.config.tags) {
      if ((towardsNetwork ? mapping.member : mapping.network) === vlan) {
        const to = towardsNetwork ? mapping.network : mapping.member;
        return usable(to) ? to : 0;
      }
    }
    return this.config.trunk && usable(vlan) ? vlan : 0;
  }

  receive(batch: FrameBatch, readyMask: number): boolean {
    const first = batch.count;
    const open = this.inner.receive(batch, readyMask);
    const { untagged, untagAs, tpid } = this.config;
    const bytes = batch.bytes;
    for (let i = first; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length < ETH_HEADER) continue;
      const offset = i * SLOT_SIZE + HEADROOM;
      const type = (bytes[offset + 12] << 8) | bytes[offset + 13];
      let result: number;
      if (type === tpid) {
        const vlan = length < ETH_HEADER + TAG ? -1 : vlanOf(bytes, offset);
        if (vlan < 0) result = 0;
        else if (vlan === untagged) result = removeTag(bytes, offset, length);
        else {
          const to = this.#mapped(vlan, false);
          result = to === 0 ? 0 : setVlan(bytes, offset, to, length);
        }
      } else if (untagAs !== 0) result = addTag(bytes, offset, length, tpid, untagAs);
      else result = untagged === 0 ? length : 0;
      if (result === 0) this.counters[Counter.dropWrongHeader]++;
      batch.lengths[i] = result;
    }
    return open;
  }

  send(batch: FrameBatch): void {
    const { untagged, untagAs, tpid } = this.config;
    const bytes = batch.bytes;
    for (let i = 0; i < batch.count; i++) {
      const length = batch.lengths[i];
      if (length === 0) continue;
      let result = 0;
      const offset = i * SLOT_SIZE + HEADROOM;
      const type = length < ETH_HEADER ? -1 : (bytes[offset + 12] << 8) | bytes[offset + 13];
      if (type === tpid) {
        const vlan = length < ETH_HEADER + TAG ? -1 : vlanOf(bytes, offset);
        if (vlan < 0) result = 0;
        else if (vlan === untagAs) result = removeTag(bytes, offset, length);
        else {
          const to = this.#mapped(vlan, true);
          result = to === 0 ? 0 : setVlan(bytes, offset, to, length);
        }
      } else if (type >= 0) {
        if (untagged === 0) result = untagAs === 0 ? length : 0;
        else if (untagged !== VLAN_MASK) result = addTag(bytes, offset, length, tpid, untagged);
      }
      if (result === 0) this.counters[Counter.dropWrongHeader]++;
      batch.lengths[i] = result;
    }
    this.inner.send(batch);
  }

  describe(): Record<string, unknown> {
    const { untagged, untagAs, tags, trunk, tpid } = this.config;
    return {
      ...this.inner.describe?.(),
      vlan: {
        untagged,
        untagAs,
        tags: tags.map((t) => t.member === t.network ? `${t.member}` : `${t.member}-${t.network}`),
        trunk,
        tpid: "0x" + tpid.toString(16),
        inner: this.inner.vnl,
      },
    };
  }

  close(): void {
    this.inner.close();
  }
}

function vlanOf(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset + 14] << 8) | bytes[offset + 15]) & VLAN_MASK;
}

/** Writes the VLAN id as the whole tag control field (priority 0), as the plugin does. */
function setVlan(bytes: Uint8Array, offset: number, vlan: number, length: number): number {
  bytes[offset + 14] = vlan >> 8;
  bytes[offset + 15] = vlan & 0xff;
  return length;
}

/** Takes the tag out: the inner EtherType moves up, the payload 4 bytes down. */
function removeTag(bytes: Uint8Array, offset: number, length: number): number {
  bytes[offset + 12] = bytes[offset + 16];
  bytes[offset + 13] = bytes[offset + 17];
  bytes.copyWithin(offset + ETH_HEADER, offset + ETH_HEADER + TAG, offset + length);
  return length - TAG;
}

/** Puts a tag in after the addresses; the payload moves 4 bytes on, into the slot's tailroom. */
function addTag(bytes: Uint8Array, offset: number, length: number, tpid: number, vlan: number) {
  if (length + TAG > MAX_FRAME) return 0;
  bytes.copyWithin(offset + 12 + TAG, offset + 12, offset + length);
  bytes[offset + 12] = tpid >> 8;
  bytes[offset + 13] = tpid & 0xff;
  bytes[offset + 14] = vlan >> 8;
  bytes[offset + 15] = vlan & 0xff;
  return length + TAG;
}
