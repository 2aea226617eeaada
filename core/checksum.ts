/**
 * The Internet checksum (RFC 1071) of frame bytes, summed by a small
 * WebAssembly function with 128-bit SIMD: the TAP's segmenter and receive
 * coalescer sum every byte of a TCP stream, and V8's JavaScript does it one
 * 32-bit word at a time.
 *
 * WebAssembly reads only its own linear memory, so the bytes to sum live in
 * one: {@linkcode checksumArea} makes a memory of its own for each area and
 * never grows it (growing would detach every view and pointer into it).
 *
 * @module
 */

/** Bytes in a WebAssembly memory, and the sum of any range of them. */
export interface ChecksumArea {
  /** The area, `size` bytes from the start of its own memory. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /**
   * The one's complement sum of bytes [start, end) as big-endian 16-bit words
   * (an odd last byte padded with zero), folded to 16 bits but not
   * complemented. Add it to other parts of a checksum, then fold and complement.
   */
  readonly sum: (start: number, end: number) => number;
}

const PAGE = 65536;

/** Makes an area of `size` bytes whose ranges {@linkcode ChecksumArea.sum} adds up. */
export function checksumArea(size: number): ChecksumArea {
  const memory = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(size / PAGE)) });
  const instance = new WebAssembly.Instance(sumModule(), { env: { memory } });
  return {
    bytes: new Uint8Array(memory.buffer as ArrayBuffer, 0, size), // not shared: made without `shared`
    sum: instance.exports.sum as (start: number, end: number) => number,
  };
}

let compiled: WebAssembly.Module | undefined;

function sumModule(): WebAssembly.Module {
  return compiled ??= new WebAssembly.Module(moduleBytes());
}

// The instructions used, from the WebAssembly binary format (Core Specification 2.0, 5.4).
const BLOCK = 0x02, LOOP = 0x03, IF = 0x04, END = 0x0b, BR = 0x0c, BR_IF = 0x0d, VOID = 0x40;
const LOCAL_GET = 0x20, LOCAL_SET = 0x21;
const I32_CONST = 0x41, I64_CONST = 0x42;
const I32_LT_U = 0x49, I32_GT_U = 0x4b, I32_LE_U = 0x4d;
const I32_ADD = 0x6a, I32_AND = 0x71, I32_OR = 0x72, I32_SHL = 0x74, I32_SHR_U = 0x76;
const I64_ADD = 0x7c, I64_AND = 0x83, I64_SHR_U = 0x88;
const I32_WRAP_I64 = 0xa7, I64_EXTEND_I32_U = 0xad;
const I64_LOAD8_U = 0x31, I64_LOAD16_U = 0x33, I64_LOAD32_U = 0x35;
const SIMD = 0xfd;
const V128_LOAD = [SIMD, 0x00];
const I32X4_EXTRACT_LANE = [SIMD, 0x1b];
const I32X4_EXTADD_PAIRWISE_I16X8_U = [SIMD, 0x7f];
const I32X4_ADD = [SIMD, 0xae, 0x01];
const I32 = 0x7f, I64 = 0x7e, V128 = 0x7b;

// The function's locals: its two parameters, then the accumulators.
const AT = 0, END_AT = 1, TOTAL = 2, LANES = 3, LANES2 = 4;

/** A memory argument: alignment hint (log2 bytes) and offset. */
function mem(align: number, offset: number): number[] {
  return [align, offset];
}

/**
 * `sum(start, end)`: the 16-bit one's complement sum of memory [start, end).
 *
 * It adds the memory as little-endian 16-bit words, which RFC 1071 (2.B)
 * allows: the sum of byte-swapped words is the byte-swapped sum, so one swap
 * at the end gives the big-endian sum. 32 bytes a turn go through two
 * accumulators of four 32-bit lanes, each lane taking the sum of two 16-bit
 * words (at most 0x1fffe) per turn: 32,768 turns (a megabyte) before a lane
 * could overflow, far more than a frame or a TAP super-frame (64 KB) holds.
 */
function sumFunctionBody(): number[] {
  const whileAtLeast = (bytes: number, body: number[]) => [
    BLOCK,
    VOID,
    LOOP,
    VOID,
    ...[LOCAL_GET, AT, I32_CONST, bytes, I32_ADD, LOCAL_GET, END_AT, I32_GT_U, BR_IF, 1],
    ...body,
    ...[LOCAL_GET, AT, I32_CONST, bytes, I32_ADD, LOCAL_SET, AT],
    ...[BR, 0, END, END],
  ];
  const addToTotal = (load: number[]) => [LOCAL_GET, TOTAL, ...load, I64_ADD, LOCAL_SET, TOTAL];
  const addPairs = (lanes: number, offset: number) => [
    ...[LOCAL_GET, lanes, LOCAL_GET, AT, ...V128_LOAD, ...mem(0, offset)],
    ...I32X4_EXTADD_PAIRWISE_I16X8_U,
    ...I32X4_ADD,
    ...[LOCAL_SET, lanes],
  ];
  const foldTotal = [
    ...[LOCAL_GET, TOTAL, I64_CONST, 0xff, 0xff, 0xff, 0xff, 0x0f, I64_AND], // low 32 bits
    ...[LOCAL_GET, TOTAL, I64_CONST, 32, I64_SHR_U, I64_ADD, LOCAL_SET, TOTAL],
  ];
  const foldSum = [
    ...[LOCAL_GET, AT, I32_CONST, 0xff, 0xff, 0x03, I32_AND], // low 16 bits
    ...[LOCAL_GET, AT, I32_CONST, 16, I32_SHR_U, I32_ADD, LOCAL_SET, AT],
  ];
  return [
    ...whileAtLeast(32, [...addPairs(LANES, 0), ...addPairs(LANES2, 16)]),
    ...[LOCAL_GET, LANES, LOCAL_GET, LANES2, ...I32X4_ADD, LOCAL_SET, LANES],
    ...[0, 1, 2, 3].flatMap((lane) =>
      addToTotal([LOCAL_GET, LANES, ...I32X4_EXTRACT_LANE, lane, I64_EXTEND_I32_U])
    ),
    ...whileAtLeast(4, addToTotal([LOCAL_GET, AT, I64_LOAD32_U, ...mem(0, 0)])),
    ...[LOCAL_GET, AT, I32_CONST, 2, I32_ADD, LOCAL_GET, END_AT, I32_LE_U, IF, VOID],
    ...addToTotal([LOCAL_GET, AT, I64_LOAD16_U, ...mem(0, 0)]),
    ...[LOCAL_GET, AT, I32_CONST, 2, I32_ADD, LOCAL_SET, AT, END],
    // A lone last byte is the high byte of its big-endian word: the low one here, before the swap.
    ...[LOCAL_GET, AT, LOCAL_GET, END_AT, I32_LT_U, IF, VOID],
    ...addToTotal([LOCAL_GET, AT, I64_LOAD8_U, ...mem(0, 0)]),
    END,
    ...foldTotal,
    ...foldTotal,
    ...foldTotal, // now below 2^32
    ...[LOCAL_GET, TOTAL, I32_WRAP_I64, LOCAL_SET, AT], // the parameter's local holds the result
    ...foldSum,
    ...foldSum, // now below 2^16
    ...[LOCAL_GET, AT, I32_CONST, 0xff, 0x01, I32_AND, I32_CONST, 8, I32_SHL], // the swap
    ...[LOCAL_GET, AT, I32_CONST, 8, I32_SHR_U, I32_OR],
    END,
  ];
}

function unsignedLeb(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

function section(id: number, contents: number[]): number[] {
  return [id, ...unsignedLeb(contents.length), ...contents];
}

function name(text: string): number[] {
  return [text.length, ...new TextEncoder().encode(text)];
}

function moduleBytes(): Uint8Array<ArrayBuffer> {
  const locals = [2, 1, I64, 2, V128]; // TOTAL; LANES and LANES2
  const body = [...locals, ...sumFunctionBody()];
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, [1, 0x60, 2, I32, I32, 1, I32]), // one type: (i32, i32) -> i32
    ...section(2, [1, ...name("env"), ...name("memory"), 0x02, 0x00, 1]), // memory, at least a page
    ...section(3, [1, 0]), // one function, of type 0
    ...section(7, [1, ...name("sum"), 0x00, 0]), // exported as "sum"
    ...section(10, [1, ...unsignedLeb(body.length), ...body]),
  ]);
}
