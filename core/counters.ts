/**
 * Counters every plug keeps: traffic per direction, how frames were sent, and
 * every reason a frame was dropped, so that nothing is lost silently.
 *
 * They live in a Float64Array over a SharedArrayBuffer, so a reader in
 * another thread (the status server) sees them without a copy.
 *
 * @module
 */

/** Names of the counters, in storage order. */
export const COUNTER_NAMES = [
  "framesIn",
  "bytesIn",
  "framesOut",
  "bytesOut",
  "sentMulticast",
  "sentUnicast",
  "dropWrongHeader",
  "dropOwnEcho",
  "dropTooShort",
  "dropTooLong",
  "dropAuthFailed",
  "dropSendError",
  "dropQueueFull",
  "dropMalformed",
  "learned",
  "tableEvictions",
  "tableExpiries",
  "goodbyesReceived",
  "dropReplay",
  "superFramesIn",
  "superFramesOut",
  "dropUnknownSender",
  "dropUnproven",
  "framesCut",
  "dropIncomplete",
] as const;

export type CounterName = typeof COUNTER_NAMES[number];

/** Index of each counter in the storage array. */
export const Counter = Object.fromEntries(COUNTER_NAMES.map((name, i) => [name, i])) as {
  [K in CounterName]: number;
};

/** A fresh set of counters, all zero. */
export function newCounters(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(COUNTER_NAMES.length * 8));
}

/** The counters as a plain object, for JSON and display. */
export function countersObject(values: Float64Array): Record<CounterName, number> {
  return Object.fromEntries(COUNTER_NAMES.map((name, i) => [name, values[i]])) as Record<
    CounterName,
    number
  >;
}
