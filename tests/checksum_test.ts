/** core/checksum.ts: the WebAssembly checksum against a plain statement of RFC 1071. */

import assert from "node:assert/strict";
import { checksumArea } from "../core/checksum.ts";

/** RFC 1071 as written: big-endian 16-bit words, an odd last byte padded, folded. */
function plainSum(bytes: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i < end; i += 2) sum += (bytes[i] << 8) | (i + 1 < end ? bytes[i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

function randomFill(bytes: Uint8Array): void {
  for (let i = 0; i < bytes.length; i += 65536) {
    crypto.getRandomValues(bytes.subarray(i, Math.min(i + 65536, bytes.length)));
  }
}

Deno.test("checksum area: RFC 1071's example sums to 0xddf2", () => {
  const area = checksumArea(16);
  area.bytes.set([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  assert.equal(area.sum(0, 8), 0xddf2);
});

Deno.test("checksum area: every start and length up to 100 bytes, on random bytes", () => {
  const area = checksumArea(4096);
  randomFill(area.bytes);
  for (let start = 0; start < 40; start++) {
    for (let length = 0; length <= 100; length++) {
      const end = start + length;
      assert.equal(area.sum(start, end), plainSum(area.bytes, start, end), `[${start}, ${end})`);
    }
  }
});

Deno.test("checksum area: long ranges, and the largest sums, fold like RFC 1071", () => {
  const size = 3 * 65536;
  const area = checksumArea(size);
  randomFill(area.bytes);
  for (let round = 0; round < 200; round++) {
    const start = Math.floor(Math.random() * 70000);
    const end = start + Math.floor(Math.random() * 70000);
    assert.equal(area.sum(start, end), plainSum(area.bytes, start, end), `[${start}, ${end})`);
  }
  area.bytes.fill(0xff);
  for (const end of [1, 2, 31, 32, 33, 1448, 65536, 65537, size]) {
    assert.equal(area.sum(0, end), plainSum(area.bytes, 0, end), `0xff to ${end}`);
  }
  assert.equal(area.sum(5, 5), 0);
});

Deno.test("checksum area: areas are apart, each the size asked", () => {
  const first = checksumArea(100);
  const second = checksumArea(100_000);
  assert.equal(first.bytes.length, 100);
  assert.equal(second.bytes.length, 100_000);
  first.bytes.fill(1);
  second.bytes.fill(2);
  assert.equal(first.sum(0, 2), 0x0101);
  assert.equal(second.sum(0, 2), 0x0202);
});
