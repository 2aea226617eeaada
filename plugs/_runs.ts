/**
 * The messages of one sendmmsg call of an overlay plug (vxvde, vxlan): a
 * datagram for the group is a message of its own; consecutive datagrams to
 * one peer, all as long as the first but the last, go as one UDP GSO message
 * that the kernel cuts into the same datagrams on the way out.
 *
 * @module
 */

import { type DatagramVector, MAX_SEGMENTS } from "../ffi/net.ts";

/** Bytes of datagrams in one UDP GSO message: a margin below the 64 KB an IP packet can hold. */
export const MAX_SEGMENTED_BYTES = 65000;

/** What a plan is written into: a {@linkcode DatagramVector}, or a recorder in tests. */
export type MessageSink = Pick<DatagramVector, "aimDatagram" | "prepareMessage">;

/** Plans the entries of a {@linkcode DatagramVector} for one send, datagram by datagram. */
export class MessagePlanner {
  readonly #nameLength: number;
  #vector?: MessageSink;
  /** Frames up to this length may share a GSO message: each datagram fits the route's MTU. */
  #segmentable = 0;
  #prepared = 0;
  #datagrams = 0;
  /** The run of datagrams to one address that is being gathered into one message. */
  #runFirst = 0;
  #runCount = 0;
  /** Where the run's destination is in the peers' table (a byte offset, so a small integer). */
  #runPeer = 0;
  #runSegment = 0;
  #runBytes = 0;

  /** The address of the group's socket address, and of the table of the peers' ones. */
  #group = 0;
  #peers = 0;

  /** `nameLength`: the length of every destination address (16 for IPv4, 28 for IPv6). */
  constructor(nameLength: number) {
    this.#nameLength = nameLength;
  }

  /**
   * Where the socket addresses are: the group's, and the table of the peers' (numeric addresses,
   * as from `numericAddress`). They are kept here, not passed per datagram: a number beyond a
   * small integer passed to a call V8 did not inline is boxed, an allocation per frame.
   */
  setAddresses(group: number, peers: number): void {
    this.#group = group;
    this.#peers = peers;
  }

  /** Starts a plan in `vector`; frames up to `segmentable` bytes may share a message (0: none). */
  start(vector: MessageSink, segmentable: number): void {
    this.#vector = vector;
    this.#segmentable = segmentable;
    this.#prepared = 0;
    this.#datagrams = 0;
    this.#runCount = 0;
    this.#runBytes = 0;
  }

  /**
   * Sends `datagram` bytes of slot `slot` to the group as a message of its own;
   * returns the index of its datagram in the vector (copies to other addresses may reuse it).
   * A split frame's datagram has `head` bytes in the slot and the rest at `restAt` (see
   * {@linkcode DatagramVector.aimDatagram}); `head` is 0 for a whole one. A
   * datagram `skip` bytes past the slot's first (a piece of a cut frame) is
   * whole there.
   */
  single(slot: number, datagram: number, head: number, restAt: number, skip = 0): number {
    this.#endRun();
    const vector = this.#vector!;
    vector.aimDatagram(this.#datagrams, slot, datagram, head, restAt, skip);
    vector.prepareMessage(
      this.#prepared,
      this.#datagrams,
      1,
      datagram,
      this.#group,
      this.#nameLength,
    );
    this.#prepared++;
    return this.#datagrams++;
  }

  /**
   * Sends `datagram` bytes of slot `slot`, which carry a frame of `frameLength`
   * bytes, to the peer whose address is `peer` bytes into the peers' table, in the run of datagrams to
   * that peer when it can join it; `head`, `restAt` and `skip` as for {@linkcode single}.
   */
  toPeer(
    slot: number,
    datagram: number,
    peer: number,
    frameLength: number,
    head: number,
    restAt: number,
    skip = 0,
  ): void {
    const joins = this.#runCount > 0 && peer === this.#runPeer &&
      datagram <= this.#runSegment && this.#runCount < MAX_SEGMENTS &&
      this.#runBytes + datagram <= MAX_SEGMENTED_BYTES && frameLength <= this.#segmentable;
    if (!joins) {
      this.#endRun();
      this.#runFirst = this.#datagrams;
      this.#runPeer = peer;
      this.#runSegment = datagram;
    }
    this.#vector!.aimDatagram(this.#datagrams++, slot, datagram, head, restAt, skip);
    this.#runCount++;
    this.#runBytes += datagram;
    if (datagram < this.#runSegment || frameLength > this.#segmentable) this.#endRun();
  }

  /** How many datagrams the plan holds: at most the vector's capacity. */
  get datagrams(): number {
    return this.#datagrams;
  }

  /** Ends the plan: returns how many entries of the vector are prepared. */
  finish(): number {
    this.#endRun();
    return this.#prepared;
  }

  #endRun(): void {
    const count = this.#runCount;
    if (count === 0) return;
    this.#vector!.prepareMessage(
      this.#prepared++,
      this.#runFirst,
      count,
      this.#runSegment,
      this.#peers + this.#runPeer,
      this.#nameLength,
    );
    this.#runCount = 0;
    this.#runBytes = 0;
  }
}
