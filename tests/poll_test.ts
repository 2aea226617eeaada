/** Waiting on descriptors: the poll set, the eventfd wakeup and the timerfd ticker. */

import assert from "node:assert/strict";
import { POLLIN, PollSet, Ticker, Wakeup } from "../ffi/poll.ts";

Deno.test("a ticker's descriptor turns readable every period, and acknowledging it clears it", () => {
  const ticker = new Ticker(50);
  try {
    const poller = new PollSet([ticker.fd]);
    assert.equal(poller.wait(0), 0, "readable before its first period");
    for (let tick = 0; tick < 3; tick++) {
      assert.equal(poller.wait(2000), 1, `tick ${tick} never came`);
      assert(poller.events(0) & POLLIN);
      ticker.acknowledge();
      assert.equal(poller.wait(0), 0, "still readable after acknowledge");
    }
  } finally {
    ticker.close();
  }
});

Deno.test("a ticker told to start at once is readable at once, then only after its period", () => {
  const ticker = new Ticker(60_000, 0);
  try {
    const poller = new PollSet([ticker.fd]);
    assert.equal(poller.wait(2000), 1, "the first tick never came");
    ticker.acknowledge();
    assert.equal(poller.wait(100), 0, "ticked again long before its period");
  } finally {
    ticker.close();
  }
});

Deno.test("a wakeup makes a waiting poll return, among other descriptors", () => {
  const ticker = new Ticker(60_000);
  const wakeup = new Wakeup();
  try {
    const poller = new PollSet([ticker.fd, wakeup.fd]);
    assert.equal(poller.wait(0), 0);
    wakeup.wake();
    assert.equal(poller.wait(2000), 1);
    assert.equal(poller.events(0), 0);
    assert(poller.events(1) & POLLIN);
  } finally {
    wakeup.close();
    ticker.close();
  }
});
