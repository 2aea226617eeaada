/**
 * The libcrypto boundary (OpenSSL 3, Debian `libssl3`): every OpenSSL function
 * vdeno calls, and the few typed wrappers the data plane uses.
 *
 * The data plane is synchronous (a Worker blocked in poll), so WebCrypto's
 * promises do not fit the per-frame path; libcrypto's EVP calls do, at a few
 * nanoseconds of FFI overhead each. A cipher context is set up once per key
 * and direction and then only re-armed with a new IV per frame: nothing is
 * allocated per frame. Hot-path methods take pointers the caller computed
 * once (see {@linkcode slotPointers}).
 *
 * The library is loaded on first use, so vdeno runs without OpenSSL as long
 * as no key is used.
 *
 * @module
 */

const symbols = {
  // EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void)
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  // void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  // int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)
  EVP_CIPHER_CTX_set_padding: { parameters: ["pointer", "i32"], result: "i32" },
  // int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "pointer"], result: "i32" },
  // const EVP_CIPHER *EVP_aes_256_gcm(void)
  EVP_aes_256_gcm: { parameters: [], result: "pointer" },
  // const EVP_CIPHER *EVP_aes_128_ecb(void)
  EVP_aes_128_ecb: { parameters: [], result: "pointer" },
  // const EVP_CIPHER *EVP_aes_128_cbc(void)
  EVP_aes_128_cbc: { parameters: [], result: "pointer" },
  // int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
  //                       const unsigned char *key, const unsigned char *iv, int enc)
  EVP_CipherInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "pointer", "pointer", "i32"],
    result: "i32",
  },
  // int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
  //                      const unsigned char *in, int inl)
  EVP_CipherUpdate: {
    parameters: ["pointer", "pointer", "buffer", "pointer", "i32"],
    result: "i32",
  },
  // int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *outm, int *outl)
  EVP_CipherFinal_ex: { parameters: ["pointer", "pointer", "buffer"], result: "i32" },
  // int EVP_Cipher(EVP_CIPHER_CTX *c, unsigned char *out, const unsigned char *in, unsigned int inl)
  EVP_Cipher: { parameters: ["pointer", "pointer", "pointer", "u32"], result: "i32" },
  // int EVP_CIPHER_CTX_set_params(EVP_CIPHER_CTX *ctx, const OSSL_PARAM params[])
  EVP_CIPHER_CTX_set_params: { parameters: ["pointer", "pointer"], result: "i32" },
  // int EVP_CIPHER_CTX_get_params(EVP_CIPHER_CTX *ctx, OSSL_PARAM params[])
  EVP_CIPHER_CTX_get_params: { parameters: ["pointer", "pointer"], result: "i32" },
  // const EVP_MD *EVP_sha256(void)
  EVP_sha256: { parameters: [], result: "pointer" },
  // unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
  //                     const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len)
  HMAC: {
    parameters: ["pointer", "buffer", "i32", "buffer", "usize", "buffer", "buffer"],
    result: "pointer",
  },
  // int RAND_bytes(unsigned char *buf, int num)
  RAND_bytes: { parameters: ["buffer", "i32"], result: "i32" },
  // unsigned long ERR_get_error(void)
  ERR_get_error: { parameters: [], result: "u64" },
  // void ERR_error_string_n(unsigned long e, char *buf, size_t len)
  ERR_error_string_n: { parameters: ["u64", "buffer", "usize"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

type Crypto = Deno.DynamicLibrary<typeof symbols>["symbols"];

let loaded: Crypto | undefined;

/** The loaded libcrypto; throws one clear line when OpenSSL 3 is missing. */
function crypto(): Crypto {
  if (loaded) return loaded;
  let lastError: unknown;
  for (const path of ["libcrypto.so.3", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"]) {
    try {
      loaded = Deno.dlopen(path, symbols).symbols;
      return loaded;
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error(
    `Cannot load libcrypto.so.3 (OpenSSL 3), needed for keyed networks; install it ` +
      `(Debian: apt-get install libssl3): ${(lastError as Error).message}`,
  );
}

/** The oldest error OpenSSL queued, as text, clearing the queue. */
function lastCryptoError(what: string): Error {
  const lib = crypto();
  const code = lib.ERR_get_error();
  const text = new Uint8Array(256);
  if (code !== 0n) lib.ERR_error_string_n(code, text, 256n);
  while (lib.ERR_get_error() !== 0n) { /* drain the rest */ }
  const message = new TextDecoder().decode(text.subarray(0, Math.max(0, text.indexOf(0))));
  return new Error(`${what} failed${message ? `: ${message}` : ""}`);
}

/** Bytes of an AES-GCM tag. */
export const GCM_TAG_SIZE = 16;
/** Bytes of an AES-GCM nonce (the IV length OpenSSL uses by default). */
export const GCM_NONCE_SIZE = 12;
/** Bytes of an AES block. */
export const AES_BLOCK = 16;

type Pointer = Deno.PointerValue;

/** Base class: owns one EVP_CIPHER_CTX and frees it on close. */
abstract class CipherContext {
  protected readonly lib: Crypto;
  protected readonly ctx: Deno.PointerObject;
  /** Receives the `int *outl` results; its value is not needed beyond the call. */
  protected readonly outLength = new Int32Array(1);
  #closed = false;

  constructor(
    cipher: "aes-256-gcm" | "aes-128-ecb" | "aes-128-cbc",
    key: Uint8Array<ArrayBuffer>,
    encrypt: boolean,
  ) {
    const lib = this.lib = crypto();
    const [type, keyLength] = cipher === "aes-256-gcm"
      ? [lib.EVP_aes_256_gcm(), 32]
      : [cipher === "aes-128-ecb" ? lib.EVP_aes_128_ecb() : lib.EVP_aes_128_cbc(), 16];
    if (key.length !== keyLength) {
      throw new RangeError(`${cipher} needs a ${keyLength}-byte key, got ${key.length}`);
    }
    const ctx = lib.EVP_CIPHER_CTX_new();
    if (ctx === null) throw lastCryptoError("EVP_CIPHER_CTX_new");
    this.ctx = ctx;
    if (
      lib.EVP_CipherInit_ex(ctx, type, null, Deno.UnsafePointer.of(key), null, encrypt ? 1 : 0) !==
        1
    ) {
      lib.EVP_CIPHER_CTX_free(ctx);
      throw lastCryptoError(`${cipher} key setup`);
    }
    // Frames are padded by their format (agno) or need none (GCM): never by OpenSSL.
    lib.EVP_CIPHER_CTX_set_padding(ctx, 0);
  }

  /** Frees the context. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.lib.EVP_CIPHER_CTX_free(this.ctx);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Bytes of one OSSL_PARAM (key, data_type, data, data_size, return_size) on a 64-bit system. */
const OSSL_PARAM_SIZE = 40;
const OSSL_PARAM_OCTET_STRING = 5;
/** OpenSSL's parameter names, kept alive here as the parameter arrays point at them. */
const PARAM_NAMES = new TextEncoder().encode("tlsivfixed\0tag\0");
const IV_NAME_AT = 0;
const TAG_NAME_AT = 11;
/**
 * (size_t)-1: as the data_size of "tlsivfixed" it sets the whole IV (OpenSSL's
 * own way of restoring one), the cheapest way to re-arm a GCM context, as
 * EVP_CipherInit_ex looks the IV length up by name on every call; as a
 * return_size it is OSSL_PARAM_UNMODIFIED.
 */
const SIZE_MAX = 0xffffffffffffffffn;

/**
 * The OSSL_PARAM arrays that point OpenSSL at the nonce and tag of each of
 * `count` slots of `slotSize` bytes in `bytes` (nonce at `nonceOffset`, tag at
 * `tagOffset` past each slot's start): made once per buffer, like
 * {@linkcode slotPointers}, and kept with it, as the arrays live in `memory`.
 */
export interface GcmSlots {
  /** Per slot: sets the nonce (sealing) or the nonce and expected tag (opening). */
  readonly arm: Deno.PointerObject[];
  /** Per slot: where a sealing context writes the tag. */
  readonly tag: Deno.PointerObject[];
  /** The memory the arrays live in: it must stay referenced while they are used. */
  readonly memory: BigUint64Array;
}

/** Builds {@linkcode GcmSlots} for a sealing (`encrypt`) or an opening context. */
export function gcmSlots(
  bytes: Uint8Array<ArrayBuffer>,
  slotSize: number,
  count: number,
  nonceOffset: number,
  tagOffset: number,
  encrypt: boolean,
): GcmSlots {
  const base = Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes));
  const names = Deno.UnsafePointer.value(Deno.UnsafePointer.of(PARAM_NAMES));
  const armEntries = encrypt ? 1 : 2, tagEntries = encrypt ? 1 : 0;
  const perSlot = armEntries + 1 + (tagEntries ? tagEntries + 1 : 0);
  const words = OSSL_PARAM_SIZE / 8;
  const memory = new BigUint64Array(count * perSlot * words);
  const start = Deno.UnsafePointer.of(memory)!;
  const arm: Deno.PointerObject[] = [], tag: Deno.PointerObject[] = [];
  const write = (entry: number, name: number, data: bigint, size: bigint) => {
    const at = entry * words;
    memory[at] = BigInt(names) + BigInt(name);
    memory[at + 1] = BigInt(OSSL_PARAM_OCTET_STRING);
    memory[at + 2] = data;
    memory[at + 3] = size;
    memory[at + 4] = SIZE_MAX;
  };
  for (let i = 0; i < count; i++) {
    const slot = BigInt(base) + BigInt(i * slotSize);
    let entry = i * perSlot;
    arm.push(Deno.UnsafePointer.offset(start, entry * OSSL_PARAM_SIZE)!);
    write(entry++, IV_NAME_AT, slot + BigInt(nonceOffset), SIZE_MAX);
    if (!encrypt) write(entry++, TAG_NAME_AT, slot + BigInt(tagOffset), BigInt(GCM_TAG_SIZE));
    entry++; // the terminating entry stays zero
    if (encrypt) {
      tag.push(Deno.UnsafePointer.offset(start, entry * OSSL_PARAM_SIZE)!);
      write(entry, TAG_NAME_AT, slot + BigInt(tagOffset), BigInt(GCM_TAG_SIZE));
    }
  }
  return { arm, tag, memory };
}

/**
 * AES-256-GCM in one direction: seals (encrypts and tags) or opens (decrypts
 * and verifies) data in place. A frame costs four calls: the nonce (and, to
 * open, the tag) set through a prepared parameter array, the AAD, the data,
 * and the end, plus one to fetch the tag when sealing; EVP_Cipher goes
 * straight to the provider.
 */
export class Gcm extends CipherContext {
  readonly #encrypt: boolean;

  /** A context for `key` (32 bytes) that seals when `encrypt`, else opens. */
  constructor(key: Uint8Array<ArrayBuffer>, encrypt: boolean) {
    super("aes-256-gcm", key, encrypt);
    this.#encrypt = encrypt;
  }

  /**
   * Encrypts `length` bytes at `data` in place, authenticating `aadLength`
   * bytes at `aad` too, with the nonce that `arm` (from {@linkcode gcmSlots},
   * sealing) names, and writes the 16-byte tag where `tag` says. Returns false
   * if OpenSSL failed (it does not for valid arguments).
   */
  seal(
    arm: Pointer,
    aad: Pointer,
    aadLength: number,
    data: Pointer,
    length: number,
    tag: Pointer,
  ): boolean {
    const lib = this.lib, ctx = this.ctx;
    return lib.EVP_CIPHER_CTX_set_params(ctx, arm) === 1 &&
      lib.EVP_Cipher(ctx, null, aad, aadLength) >= 0 &&
      (length === 0 || lib.EVP_Cipher(ctx, data, data, length) >= 0) &&
      lib.EVP_Cipher(ctx, null, null, 0) >= 0 &&
      lib.EVP_CIPHER_CTX_get_params(ctx, tag) === 1;
  }

  /**
   * Decrypts `length` bytes at `data` in place and verifies them, with the
   * `aadLength` bytes at `aad`, against the tag that `arm` (from
   * {@linkcode gcmSlots}, opening) names with the nonce. Returns false when
   * anything was altered or the key differs; the data is garbage then.
   */
  open(arm: Pointer, aad: Pointer, aadLength: number, data: Pointer, length: number): boolean {
    const lib = this.lib, ctx = this.ctx;
    return lib.EVP_CIPHER_CTX_set_params(ctx, arm) === 1 &&
      lib.EVP_Cipher(ctx, null, aad, aadLength) >= 0 &&
      (length === 0 || lib.EVP_Cipher(ctx, data, data, length) >= 0) &&
      lib.EVP_Cipher(ctx, null, null, 0) >= 0;
  }

  /** Whether this context seals. */
  get sealing(): boolean {
    return this.#encrypt;
  }
}

/** AES-128 in ECB or CBC mode, one direction, in place, whole blocks, no padding (for agno). */
export class Aes128 extends CipherContext {
  readonly #encrypt: number;

  /** A context for `key` (16 bytes) in `mode`, encrypting when `encrypt`, else decrypting. */
  constructor(key: Uint8Array<ArrayBuffer>, mode: "ecb" | "cbc", encrypt: boolean) {
    super(mode === "ecb" ? "aes-128-ecb" : "aes-128-cbc", key, encrypt);
    this.#encrypt = encrypt ? 1 : 0;
  }

  /**
   * Runs the cipher over `length` bytes (a multiple of 16) at `data`, in
   * place; in CBC mode `iv` (16 bytes, read at once) starts the chain.
   */
  run(iv: Pointer, data: Pointer, length: number): boolean {
    const lib = this.lib, ctx = this.ctx;
    if (iv !== null && lib.EVP_CipherInit_ex(ctx, null, null, null, iv, this.#encrypt) !== 1) {
      return false;
    }
    return length === 0 || lib.EVP_CipherUpdate(ctx, data, this.outLength, data, length) === 1;
  }
}

/** HMAC-SHA-256 of `data` under `key` (32 bytes). */
export function hmacSha256(
  key: Uint8Array<ArrayBuffer>,
  data: Uint8Array<ArrayBuffer>,
): Uint8Array<ArrayBuffer> {
  const lib = crypto();
  const digest = new Uint8Array(32);
  const digestLength = new Uint32Array(1);
  const result = lib.HMAC(
    lib.EVP_sha256(),
    key,
    key.length,
    data,
    BigInt(data.length),
    digest,
    digestLength,
  );
  if (result === null || digestLength[0] !== 32) throw lastCryptoError("HMAC-SHA-256");
  return digest;
}

/**
 * HKDF-SHA-256 (RFC 5869) with one output block: 32 bytes derived from the
 * secret `ikm`, a `salt` and an `info` naming what the key is for.
 */
export function hkdfSha256(
  ikm: Uint8Array<ArrayBuffer>,
  salt: Uint8Array<ArrayBuffer>,
  info: Uint8Array<ArrayBuffer>,
): Uint8Array<ArrayBuffer> {
  const prk = hmacSha256(salt, ikm);
  const block = new Uint8Array(info.length + 1);
  block.set(info);
  block[info.length] = 1;
  const okm = hmacSha256(prk, block);
  prk.fill(0);
  return okm;
}

/** Fills `buffer` with bytes from OpenSSL's CSPRNG. */
export function randomBytes(buffer: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  if (crypto().RAND_bytes(buffer, buffer.length) !== 1) throw lastCryptoError("RAND_bytes");
  return buffer;
}

/**
 * Pointers into a buffer at `offsets[k]` past each of `count` slots of
 * `slotSize` bytes: made once per buffer so the data path creates none.
 * Result [k][i] points at slot i, offset k.
 */
export function slotPointers(
  bytes: Uint8Array<ArrayBuffer>,
  slotSize: number,
  count: number,
  offsets: readonly number[],
): Deno.PointerObject[][] {
  const base = Deno.UnsafePointer.of(bytes)!;
  return offsets.map((offset) =>
    Array.from({ length: count }, (_, i) => Deno.UnsafePointer.offset(base, i * slotSize + offset)!)
  );
}
