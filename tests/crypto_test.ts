/**
 * The libcrypto boundary against an independent implementation, WebCrypto:
 * AES-256-GCM, AES-128-ECB/CBC and HKDF-SHA-256 give the same bytes, and a
 * wrong tag, AAD or key is refused.
 */

import assert from "node:assert/strict";
import { Aes128, Gcm, hkdfSha256, randomBytes } from "../ffi/crypto.ts";

const pointer = (bytes: Uint8Array<ArrayBuffer>) => Deno.UnsafePointer.of(bytes);
const random = (length: number) => crypto.getRandomValues(new Uint8Array(length));

Deno.test("AES-256-GCM seals as WebCrypto does and opens only untouched data", async () => {
  for (const length of [0, 1, 15, 16, 100, 1514, 9234]) {
    const key = random(32), nonce = random(12), aad = random(24), plain = random(length);
    const data = plain.slice(), tag = new Uint8Array(16);
    using sealing = new Gcm(key, true);
    assert.ok(sealing.seal(pointer(nonce), pointer(aad), 24, pointer(data), length, pointer(tag)));
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
    const copy = data.slice();
    assert.ok(opening.open(pointer(nonce), pointer(aad), 24, pointer(copy), length, pointer(tag)));
    assert.deepEqual(copy, plain);
    const badAad = aad.slice();
    badAad[0] ^= 1;
    assert.equal(
      opening.open(
        pointer(nonce),
        pointer(badAad),
        24,
        pointer(data.slice()),
        length,
        pointer(tag),
      ),
      false,
    );
    const badTag = tag.slice();
    badTag[15] ^= 0x80;
    assert.equal(
      opening.open(
        pointer(nonce),
        pointer(aad),
        24,
        pointer(data.slice()),
        length,
        pointer(badTag),
      ),
      false,
    );
    using otherKey = new Gcm(random(32), false);
    assert.equal(
      otherKey.open(pointer(nonce), pointer(aad), 24, pointer(data.slice()), length, pointer(tag)),
      false,
    );
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
