/**
 * The libcrypto boundary against an independent implementation, WebCrypto:
 * AES-256-GCM, AES-128-ECB/CBC and HKDF-SHA-256 give the same bytes, and a
 * wrong tag, AAD or key is refused.
 */

import assert from "node:assert/strict";
import { Aes128, Gcm, gcmSlots, hkdfSha256, randomBytes } from "../ffi/crypto.ts";

const pointer = (bytes: Uint8Array<ArrayBuffer>) => Deno.UnsafePointer.of(bytes);
const random = (length: number) => crypto.getRandomValues(new Uint8Array(length));

/** A nonce and a tag side by side, and OpenSSL's parameter arrays for them. */
function gcmMeta(nonce: Uint8Array, tag: Uint8Array, encrypt: boolean) {
  const meta = new Uint8Array(12 + 16);
  meta.set(nonce);
  meta.set(tag, 12);
  const slots = gcmSlots(meta, meta.length, 1, 0, 12, encrypt);
  return { meta, arm: slots.arm[0], tag: encrypt ? slots.tag[0] : null, slots };
}

Deno.test("AES-256-GCM seals as WebCrypto does and opens only untouched data", async () => {
  for (const length of [0, 1, 15, 16, 100, 1514, 9234]) {
    const key = random(32), nonce = random(12), aad = random(24), plain = random(length);
    const data = plain.slice();
    using sealing = new Gcm(key, true);
    const sealed = gcmMeta(nonce, new Uint8Array(16), true);
    assert.ok(sealing.seal(sealed.arm, pointer(aad), 24, pointer(data), length, sealed.tag));
    const tag = sealed.meta.slice(12);
    const webKey = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
    const expected = new Uint8Array(
      await crypto.subtle.encrypt(
        { name: "AES-GCM", iv: nonce, additionalData: aad },
        webKey,
        plain,
      ),
    );
    assert.deepEqual(data, expected.subarray(0, length), `ciphertext of ${length} bytes`);
    assert.deepEqual(tag, expected.subarray(length), `tag of ${length} bytes`);

    using opening = new Gcm(key, false);
    const good = gcmMeta(nonce, tag, false);
    const copy = data.slice();
    assert.ok(opening.open(good.arm, pointer(aad), 24, pointer(copy), length));
    assert.deepEqual(copy, plain);
    // The same context again, after a refusal and after a success: each frame is armed afresh.
    const badAad = aad.slice();
    badAad[0] ^= 1;
    assert.equal(opening.open(good.arm, pointer(badAad), 24, pointer(data.slice()), length), false);
    const badTag = tag.slice();
    badTag[15] ^= 0x80;
    const forged = gcmMeta(nonce, badTag, false);
    assert.equal(opening.open(forged.arm, pointer(aad), 24, pointer(data.slice()), length), false);
    const otherNonce = nonce.slice();
    otherNonce[11] ^= 1;
    const moved = gcmMeta(otherNonce, tag, false);
    assert.equal(opening.open(moved.arm, pointer(aad), 24, pointer(data.slice()), length), false);
    if (length > 0) {
      const flipped = data.slice();
      flipped[length - 1] ^= 1;
      assert.equal(opening.open(good.arm, pointer(aad), 24, pointer(flipped), length), false);
    }
    const again = data.slice();
    assert.ok(opening.open(good.arm, pointer(aad), 24, pointer(again), length));
    assert.deepEqual(again, plain);
    using otherKey = new Gcm(random(32), false);
    assert.equal(otherKey.open(good.arm, pointer(aad), 24, pointer(data.slice()), length), false);
  }
});

Deno.test("AES-256-GCM slot parameters name each slot's own nonce and tag", async () => {
  const key = random(32), slotSize = 2048, count = 4, aadLength = 28, length = 1400;
  const bytes = new Uint8Array(slotSize * count);
  const plains = Array.from({ length: count }, () => random(length));
  const aads = Array.from({ length: count }, () => random(aadLength));
  const nonces = Array.from({ length: count }, () => random(12));
  // Per slot: AAD at 0 (its last 12 bytes the nonce, as a sealed datagram has), tag at 28, data at 64.
  for (let i = 0; i < count; i++) {
    aads[i].set(nonces[i], aadLength - 12);
    bytes.set(aads[i], i * slotSize);
    bytes.set(plains[i], i * slotSize + 64);
  }
  const at = (i: number, offset: number) => pointer(bytes.subarray(i * slotSize + offset));
  using sealing = new Gcm(key, true);
  const sealingSlots = gcmSlots(bytes, slotSize, count, aadLength - 12, aadLength, true);
  for (let i = count - 1; i >= 0; i--) {
    assert.ok(
      sealing.seal(
        sealingSlots.arm[i],
        at(i, 0),
        aadLength,
        at(i, 64),
        length,
        sealingSlots.tag[i],
      ),
    );
  }
  const webKey = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
  for (let i = 0; i < count; i++) {
    const expected = new Uint8Array(
      await crypto.subtle.encrypt(
        { name: "AES-GCM", iv: nonces[i], additionalData: aads[i] },
        webKey,
        plains[i],
      ),
    );
    const slot = bytes.subarray(i * slotSize);
    assert.deepEqual(slot.subarray(64, 64 + length), expected.subarray(0, length), `slot ${i}`);
    assert.deepEqual(slot.subarray(aadLength, aadLength + 16), expected.subarray(length));
  }
  using opening = new Gcm(key, false);
  const openingSlots = gcmSlots(bytes, slotSize, count, aadLength - 12, aadLength, false);
  for (let i = 0; i < count; i++) {
    assert.ok(opening.open(openingSlots.arm[i], at(i, 0), aadLength, at(i, 64), length));
    assert.deepEqual(bytes.subarray(i * slotSize + 64, i * slotSize + 64 + length), plains[i]);
  }
});

Deno.test("AES-128-ECB and CBC, in place and reused, match WebCrypto both ways", async () => {
  const key = random(16);
  const webKey = await crypto.subtle.importKey("raw", key, "AES-CBC", false, ["encrypt"]);
  using ecb = new Aes128(key, "ecb", true);
  using ecbBack = new Aes128(key, "ecb", false);
  using cbc = new Aes128(key, "cbc", true);
  using cbcBack = new Aes128(key, "cbc", false);
  for (const blocks of [1, 2, 5, 94]) {
    const iv = random(16), plain = random(blocks * 16);
    const web = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-CBC", iv }, webKey, plain));
    const data = plain.slice();
    assert.ok(cbc.run(pointer(iv), pointer(data), data.length));
    assert.deepEqual(data, web.subarray(0, data.length), `CBC over ${blocks} blocks`);
    assert.ok(cbcBack.run(pointer(iv), pointer(data), data.length));
    assert.deepEqual(data, plain);

    // One ECB block is one CBC block under a zero IV.
    const block = plain.slice(0, 16);
    const zero = new Uint8Array(16);
    const webBlock = new Uint8Array(
      await crypto.subtle.encrypt({ name: "AES-CBC", iv: zero }, webKey, block),
    );
    assert.ok(ecb.run(null, pointer(block), 16));
    assert.deepEqual(block, webBlock.subarray(0, 16));
    assert.ok(ecbBack.run(null, pointer(block), 16));
    assert.deepEqual(block, plain.subarray(0, 16));
  }
});

Deno.test("HKDF-SHA-256 matches WebCrypto's; random bytes differ", async () => {
  for (let round = 0; round < 5; round++) {
    const ikm = random(32), salt = random(round * 7), info = random(round * 5 + 1);
    const base = await crypto.subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
    const expected = new Uint8Array(
      await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, base, 256),
    );
    assert.deepEqual(hkdfSha256(ikm, salt, info), expected);
  }
  assert.notDeepEqual(randomBytes(new Uint8Array(16)), randomBytes(new Uint8Array(16)));
});

Deno.test("a key of the wrong size is refused with a clear message", () => {
  assert.throws(() => new Gcm(new Uint8Array(16), true), /aes-256-gcm needs a 32-byte key, got 16/);
  assert.throws(() => new Aes128(new Uint8Array(32), "cbc", true), /needs a 16-byte key, got 32/);
});
