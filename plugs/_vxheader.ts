/**
 * The 8-byte header before every frame of vxvde, and of VXLAN, which has the
 * same shape (RFC 7348): byte 0 the flags (0x08: the VNI is valid), bytes 4-6
 * the VNI; vxvde marks a sealed datagram in byte 3 and a hello in byte 2.
 *
 * @module
 */

/** Bytes of the header. */
export const HEADER_SIZE = 8;
/** Byte 0: the I flag, the VNI is valid. */
const FLAGS = 0x08;
/** The value of header byte 3 that marks a sealed datagram. */
export const SEALED_MARK = 0x5e;

/** The header of network `vni`; `mark` is byte 3 (SEALED_MARK on a keyed network). */
export function vxvdeHeader(vni: number, mark = 0): Uint8Array<ArrayBuffer> {
  return new Uint8Array([FLAGS, 0, 0, mark, (vni >> 16) & 0xff, (vni >> 8) & 0xff, vni & 0xff, 0]);
}
