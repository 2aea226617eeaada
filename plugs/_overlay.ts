/**
 * What the overlay plugs (vxvde, vxlan) do alike around their own header
 * handling: a datagram vector per batch, the end of a send, the largest frame
 * a datagram carries whole, and the learned table in `describe()`.
 *
 * @module
 */

import {
  AF_INET,
  DatagramVector,
  formatSocketAddress,
  routeMtu,
  SOCKADDR_SIZE,
  type SocketAddress,
} from "../ffi/net.ts";
import { Counter } from "../core/counters.ts";
import { HEADROOM, PerBatch, SLOT_SIZE } from "../core/frames.ts";
import { log } from "../core/log.ts";
import { formatMac, type MacTable } from "./_mactable.ts";
import type { PeerMesh } from "./_peers.ts";
import type { MessagePlanner } from "./_runs.ts";

/**
 * One datagram vector per batch, serving both ways (every receive re-aims its
 * entries at their slots): each datagram starts `prefix` bytes before its frame.
 */
export function datagramVectors(prefix: number): PerBatch<DatagramVector> {
  return new PerBatch((batch) =>
    new DatagramVector(batch.bytes, SLOT_SIZE, HEADROOM - prefix, batch.capacity)
  );
}

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
