/**
 * What the overlay plugs (vxvde, vxlan) do alike around their own header
 * handling: the options they share, the end of a send, the largest frame a
 * datagram carries whole, and the learned table in `describe()`.
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  type DatagramVector,
  formatSocketAddress,
  routeMtu,
  SOCKADDR_SIZE,
  SocketAddress,
} from "../ffi/net.ts";
import { Counter } from "../core/counters.ts";
import { log } from "../core/log.ts";
import { parseInteger, parseSize, VnlError } from "../core/vnl.ts";
import { formatMac, type MacTable } from "./_mactable.ts";
import { DEFAULT_PEER_TIMEOUT, parsePeers, type PeerMesh, peersFamily } from "./_peers.ts";
import type { MessagePlanner } from "./_runs.ts";

/**
 * The largest frame that a datagram of `prefix` bytes before the frame
 * carries whole on the route to `group`; undefined where the route has no MTU.
 */
export function largestWholeFrame(
  group: SocketAddress,
  ifindex: number,
  prefix: number,
): number | undefined {
  const mtu = routeMtu(group, ifindex);
  const ipHeader = group.family === AF_INET ? 20 : 40, udpHeader = 8;
  return mtu ? mtu - ipHeader - udpHeader - prefix : undefined;
}

/**
 * Ends a send: sends what `planner` prepared in `vector` from `fd`, counts
 * what failed, warns once when the kernel refuses UDP GSO, and copies the
 * floods to `mesh`'s members.
 */
export function sendPlanned(
  vnl: string,
  fd: number,
  vector: DatagramVector,
  planner: MessagePlanner,
  counters: Float64Array,
  mesh: PeerMesh | undefined,
): void {
  const prepared = planner.finish();
  const refused = vector.segmentationRefused;
  const failed = vector.sendAll(fd, prepared);
  if (vector.segmentationRefused && !refused) {
    log(
      "warn",
      `${vnl}: the kernel refused a UDP GSO message (an old kernel, or no checksum ` +
        `offload on the way out); sending one datagram per frame from now on`,
    );
  }
  counters[Counter.dropSendError] += failed;
  counters[Counter.framesOut] -= failed;
  mesh?.replicate(vector, fd, counters);
}

/** The learned part of an overlay plug's `describe()`: the table, its peers, and `mesh`'s. */
export function describeTable(
  table: MacTable,
  expireSeconds: number,
  mesh: PeerMesh | undefined,
): Record<string, unknown> {
  const now = Date.now() / 1000;
  const learned = table.entries(now).map((entry) => ({
    mac: formatMac(entry.mac),
    peer: formatSocketAddress(table.addresses, entry.slot * SOCKADDR_SIZE),
    ageSeconds: Math.round(entry.ageSeconds * 10) / 10,
  }));
  return {
    expireSeconds,
    tableSize: table.size,
    learned,
    peers: [...new Set(learned.map((entry) => entry.peer))],
    ...mesh?.describe(),
  };
}

/** The options that vxvde and vxlan VNLs read alike. */
type MemberOptions = Partial<
  Record<
    "v6" | "v4" | "ttl" | "rcvbuf" | "hashsize" | "expiretime" | "if" | "peers" | "peertimeout",
    string
  >
>;

/**
 * The address family `v6` or `v4` asks for; with neither or both, that of
 * `peers=` where no group is given, else whichever the group's address has.
 */
export function memberFamily(address: string, options: MemberOptions): number | undefined {
  const wantV6 = options.v6 !== undefined, wantV4 = options.v4 !== undefined;
  return wantV6 === wantV4
    ? (address === "" && options.peers ? peersFamily(options.peers) : undefined)
    : wantV6
    ? AF_INET6
    : AF_INET;
}

/** The group at `host` and `port`, or a clear error where `host` is no numeric address. */
export function parseGroup(
  scheme: string,
  host: string,
  port: number,
  family: number | undefined,
): SocketAddress {
  const group = SocketAddress.parse(host, port, family);
  if (!group) {
    throw new VnlError(
      `Bad ${scheme} group address: ${JSON.stringify(host)}; expected a numeric ${
        family === AF_INET6 ? "IPv6" : family === AF_INET ? "IPv4" : "IPv4 or IPv6"
      } multicast address such as 239.0.0.1 or ff05:56de::1`,
    );
  }
  return group;
}

/** Throws a clear error unless `group` (written `host`) is a multicast address. */
export function requireMulticast(scheme: string, group: SocketAddress, host: string): void {
  const ip = group.ip;
  if (group.family === AF_INET ? (ip[0] & 0xf0) !== 0xe0 : ip[0] !== 0xff) {
    throw new VnlError(
      `Bad ${scheme} group address: ${host} is not a multicast address (224.0.0.0/4 or ff00::/8)`,
    );
  }
}

/** The settings that vxvde and vxlan read alike from their options, past the group and VNI. */
export interface MemberSettings {
  /** `ttl=`: hop limit of the datagrams sent to the group (vxvde's unicast too, without `peers=`). */
  ttl: number;
  receiveBuffer?: number;
  hashSize: number;
  expireSeconds: number;
  interfaceName?: string;
  /** `peers=`: members reached by unicast too (see plugs/_peers.ts). */
  peers?: SocketAddress[];
  /** `peertimeout=`: seconds after which a silent member is dropped. */
  peerTimeout: number;
}

/** Reads {@linkcode MemberSettings}; `peers=` defaults to the group's `port` and `family`. */
export function parseMemberSettings(
  options: MemberOptions,
  port: number,
  family: number,
): MemberSettings {
  const expire = options.expiretime === undefined
    ? 128
    : parseInteger(options.expiretime, "expiretime", -(2 ** 31), 2 ** 31 - 1);
  return {
    ttl: parseInteger(options.ttl ?? "1", "ttl", 0, 255),
    receiveBuffer: options.rcvbuf === undefined ? undefined : parseSize(options.rcvbuf, "rcvbuf"),
    hashSize: options.hashsize === undefined
      ? 1024
      : parseInteger(options.hashsize, "hashsize", 1, 1 << 24),
    expireSeconds: expire > 0 ? expire : 128,
    interfaceName: options.if,
    peers: options.peers === undefined ? undefined : parsePeers(options.peers, port, family),
    peerTimeout: options.peertimeout === undefined
      ? DEFAULT_PEER_TIMEOUT
      : parseInteger(options.peertimeout, "peertimeout", 1, 86400),
  };
}
