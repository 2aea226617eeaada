/**
 * Datagram vectors of the plugs whose frames travel one per datagram (vde,
 * udp, and the overlays, which write their header before each frame), and the
 * send of the plugs that send every frame to one place.
 *
 * @module
 */

import { DatagramVector } from "../ffi/net.ts";
import { Counter } from "../core/counters.ts";
import { type FrameBatch, HEADROOM, PerBatch, SLOT_SIZE } from "../core/frames.ts";

/**
 * One datagram vector per batch, serving both ways (every receive re-aims its
 * entries at their slots): each datagram starts `prefix` bytes before its frame.
 */
export function datagramVectors(prefix: number): PerBatch<DatagramVector> {
  return new PerBatch((batch) =>
    new DatagramVector(batch.bytes, SLOT_SIZE, HEADROOM - prefix, batch.capacity, batch.runsAt)
  );
}

/**
 * Sends every frame of `batch` from `fd` as a datagram of its own to the
 * address at `name` (`nameLength` bytes; 0 and 0 on a connected socket), and
 * counts the frames sent and those that failed.
 */
export function sendEach(
  fd: number,
  vector: DatagramVector,
  batch: FrameBatch,
  counters: Float64Array,
  name: number,
  nameLength: number,
): void {
  let prepared = 0;
  for (let i = 0; i < batch.count; i++) {
    const length = batch.lengths[i];
    if (length === 0) continue;
    vector.prepare(prepared++, i, length, name, nameLength);
    counters[Counter.framesOut]++;
    counters[Counter.bytesOut] += length;
  }
  const failed = vector.sendAll(fd, prepared);
  counters[Counter.dropSendError] += failed;
  counters[Counter.framesOut] -= failed;
}
