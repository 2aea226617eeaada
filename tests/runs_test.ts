/** plugs/_runs.ts: which datagrams of a send share a UDP GSO message, as a table. */

import assert from "node:assert/strict";
import { MAX_SEGMENTS } from "../ffi/net.ts";
import { MAX_SEGMENTED_BYTES, MessagePlanner, type MessageSink } from "../plugs/_runs.ts";

/** One datagram of a send: to the group (a message of its own), or to a peer. */
type Datagram =
  & ({ group: true; bytes: number } | { peer: number; bytes: number; frame?: number })
  & { head?: number; restAt?: number } // a split frame's datagram: its head in the slot
  & { slot?: number; skip?: number }; // a piece of a cut frame: in that slot, skip bytes in

/** A message as the plan prepared it: its datagrams (by index), their segment size, the address. */
interface Message {
  datagrams: number[];
  segment: number;
  name: number;
}

const GROUP = 999;
const HEADER = 8;

/** Plans `datagrams` and returns the messages, checking each datagram is aimed at its own slot. */
function plan(datagrams: Datagram[], segmentable: number): Message[] {
  const aimed: [number, number, number, number, number][] = [];
  const messages: Message[] = [];
  const sink: MessageSink = {
    aimDatagram(j, slot, length, head = 0, restAt = 0, skip = 0) {
      aimed[j] = [slot, length, head, restAt, skip];
    },
    prepareMessage(i, first, count, segment, name, nameLength) {
      assert.equal(i, messages.length, "messages are prepared in order");
      assert.equal(nameLength, 16);
      messages.push({
        datagrams: Array.from({ length: count }, (_, k) => first + k),
        segment,
        name,
      });
    },
  };
  const planner = new MessagePlanner(16);
  planner.setAddresses(GROUP, 0);
  planner.start(sink, segmentable);
  datagrams.forEach((datagram, index) => {
    const head = datagram.head ?? 0, restAt = datagram.restAt ?? 0, skip = datagram.skip ?? 0;
    const slot = datagram.slot ?? index;
    if ("group" in datagram) planner.single(slot, datagram.bytes, head, restAt, skip);
    else {
      const frame = datagram.frame ?? datagram.bytes - HEADER;
      planner.toPeer(slot, datagram.bytes, datagram.peer, frame, head, restAt, skip);
    }
    assert.equal(planner.datagrams, index + 1, "the plan counts its datagrams");
  });
  assert.equal(planner.finish(), messages.length);
  // Every datagram is aimed once, at its own slot with its own length and split, in order.
  assert.deepEqual(
    aimed,
    datagrams.map((datagram, index) => [
      datagram.slot ?? index,
      datagram.bytes,
      datagram.head ?? 0,
      datagram.restAt ?? 0,
      datagram.skip ?? 0,
    ]),
  );
  return messages;
}

const toPeer = (peer: number, bytes: number, count = 1): Datagram[] =>
  Array.from({ length: count }, () => ({ peer, bytes }));

/** The two equal pieces of a frame cut in slot `slot` (keyed: 44 bytes before each of 721). */
const pieces = (slot: number, to?: number): Datagram[] =>
  [0, 1472].map((skip) =>
    to === undefined
      ? { group: true, bytes: 765, slot, skip }
      : { peer: to, bytes: 765, frame: 721, slot, skip }
  );

const cases: { name: string; datagrams: Datagram[]; segmentable?: number; messages: Message[] }[] =
  [
    {
      name: "the pieces of frames cut in their slots share one message with whole datagrams",
      datagrams: [...pieces(0, 1), ...pieces(1, 1), ...toPeer(1, 765)],
      segmentable: 1428,
      messages: [{ datagrams: [0, 1, 2, 3, 4], segment: 765, name: 1 }],
    },
    {
      name: "the pieces of a frame for the group are a message each",
      datagrams: pieces(0),
      segmentable: 1428,
      messages: [
        { datagrams: [0], segment: 765, name: GROUP },
        { datagrams: [1], segment: 765, name: GROUP },
      ],
    },
    {
      name: "equal datagrams to one peer share one message",
      datagrams: toPeer(1, 1408, 3),
      messages: [{ datagrams: [0, 1, 2], segment: 1408, name: 1 }],
    },
    {
      name: "a shorter datagram ends the run it joins",
      datagrams: [...toPeer(1, 1408, 2), ...toPeer(1, 100), ...toPeer(1, 1408)],
      messages: [
        { datagrams: [0, 1, 2], segment: 1408, name: 1 },
        { datagrams: [3], segment: 1408, name: 1 },
      ],
    },
    {
      name: "a longer datagram starts a message of its own",
      datagrams: [...toPeer(1, 100), ...toPeer(1, 1408, 2)],
      messages: [
        { datagrams: [0], segment: 100, name: 1 },
        { datagrams: [1, 2], segment: 1408, name: 1 },
      ],
    },
    {
      name: "another peer ends the run, and runs do not resume after it",
      datagrams: [...toPeer(1, 1408), ...toPeer(2, 1408, 2), ...toPeer(1, 1408)],
      messages: [
        { datagrams: [0], segment: 1408, name: 1 },
        { datagrams: [1, 2], segment: 1408, name: 2 },
        { datagrams: [3], segment: 1408, name: 1 },
      ],
    },
    {
      name: "a datagram for the group is a message of its own and ends the run",
      datagrams: [...toPeer(1, 1408), { group: true, bytes: 60 }, ...toPeer(1, 1408)],
      messages: [
        { datagrams: [0], segment: 1408, name: 1 },
        { datagrams: [1], segment: 60, name: GROUP },
        { datagrams: [2], segment: 1408, name: 1 },
      ],
    },
    {
      name: "split frames' datagrams join runs as whole ones, each aimed at its head and rest",
      datagrams: [
        { peer: 1, bytes: 1472, head: 74, restAt: 700_000 },
        { peer: 1, bytes: 1472 },
        { peer: 1, bytes: 1472, head: 74, restAt: 701_406 },
        { peer: 1, bytes: 500, head: 74, restAt: 702_812 },
        { group: true, bytes: 1472, head: 74, restAt: 703_238 },
      ],
      messages: [
        { datagrams: [0, 1, 2, 3], segment: 1472, name: 1 },
        { datagrams: [4], segment: 1472, name: GROUP },
      ],
    },
    {
      name: "with no segmentation every datagram is a message",
      datagrams: toPeer(1, 1408, 2),
      segmentable: 0,
      messages: [
        { datagrams: [0], segment: 1408, name: 1 },
        { datagrams: [1], segment: 1408, name: 1 },
      ],
    },
    {
      name: "a frame longer than the route carries whole goes alone",
      datagrams: [...toPeer(1, 1408), { peer: 1, bytes: 1408, frame: 1401 }, ...toPeer(1, 1408)],
      segmentable: 1400,
      messages: [
        { datagrams: [0], segment: 1408, name: 1 },
        { datagrams: [1], segment: 1408, name: 1 },
        { datagrams: [2], segment: 1408, name: 1 },
      ],
    },
    {
      name: `a message holds at most ${MAX_SEGMENTS} datagrams`,
      datagrams: toPeer(1, 200, MAX_SEGMENTS + 1),
      messages: [
        { datagrams: Array.from({ length: MAX_SEGMENTS }, (_, i) => i), segment: 200, name: 1 },
        { datagrams: [MAX_SEGMENTS], segment: 200, name: 1 },
      ],
    },
    {
      name: `a message holds at most ${MAX_SEGMENTED_BYTES} bytes`,
      datagrams: toPeer(1, 1408, 47),
      messages: [
        { datagrams: Array.from({ length: 46 }, (_, i) => i), segment: 1408, name: 1 },
        { datagrams: [46], segment: 1408, name: 1 },
      ],
    },
  ];

for (const { name, datagrams, segmentable, messages } of cases) {
  Deno.test(`send plan: ${name}`, () => {
    assert.deepEqual(plan(datagrams, segmentable ?? 1500), messages);
  });
}

Deno.test("send plan: a planner starts afresh on each send", () => {
  const planner = new MessagePlanner(16);
  const prepared: number[] = [];
  const sink: MessageSink = {
    aimDatagram() {},
    prepareMessage(_i, _first, count) {
      prepared.push(count);
    },
  };
  planner.start(sink, 1500);
  planner.toPeer(0, 1408, 1, 1400, 0, 0);
  planner.toPeer(1, 1408, 1, 1400, 0, 0);
  assert.equal(planner.finish(), 1);
  planner.start(sink, 1500);
  planner.toPeer(0, 1408, 1, 1400, 0, 0);
  assert.equal(planner.finish(), 1);
  assert.deepEqual(prepared, [2, 1]);
});
