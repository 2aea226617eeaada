/**
 * VNL (Virtual Network Locator) parsing, with vdeplug4's rules.
 *
 * A VNL is `scheme://rest`. Schemes that take options split `rest` on `/`:
 * the first element is the address, the others `key=value` or bare `key`,
 * where a key selects the first option whose name it is a prefix of. Inside
 * an element `'...'`, `"..."` and `\x` protect delimiters and `%XX` is a byte.
 * Nested VNLs stand in braces: `agno://key{vxvde://...}`.
 *
 * @module
 */

import { fileInfo, groupId as processGroupId, readTextFile } from "../ffi/os.ts";

/** A VNL that cannot be used, with a message that says why. */
export class VnlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VnlError";
  }
}

/** A VNL split into scheme and the text after `://`. */
export interface SplitVnl {
  scheme: string;
  rest: string;
}

/** Splits `scheme://rest`; a plain path to a file holding a VNL on its first line is followed. */
export function splitVnl(vnl: string): SplitVnl {
  const marker = vnl.indexOf("://");
  if (marker < 0) {
    const fromFile = readVnlFile(vnl);
    if (fromFile !== undefined) return splitVnl(fromFile);
    throw new VnlError(
      `Not a VNL: ${
        JSON.stringify(vnl)
      }; expected scheme://address, e.g. vxvde://239.0.0.1 or tap://tap0`,
    );
  }
  const scheme = vnl.slice(0, marker);
  // A scheme names a module (and, through libvdeplug, a plugin file): letters, digits and _+.- only.
  if (!/^[A-Za-z0-9_+.-]*$/.test(scheme)) {
    throw new VnlError(
      `Not a VNL scheme: ${JSON.stringify(scheme)}; a scheme has letters, digits and _+.- only`,
    );
  }
  return { scheme, rest: vnl.slice(marker + 3) };
}

function readVnlFile(path: string): string | undefined {
  if (path === "") return undefined;
  try {
    if (!fileInfo(path)?.isFile) return undefined;
    const firstLine = readTextFile(path).split("\n")[0].trim();
    return firstLine.includes("://") ? firstLine : undefined;
  } catch {
    return undefined;
  }
}

const HEX = /^[0-9a-fA-F]$/;

/**
 * Splits `text` on unquoted `delimiter`s, removing quotes and escapes and
 * decoding `%XX`, element by element.
 */
export function splitQuoted(text: string, delimiter: string): string[] {
  const elements: string[] = [];
  let bytes: number[] = [];
  let mode: "plain" | "single" | "double" = "plain";
  const encoder = new TextEncoder();
  const finish = () => {
    elements.push(new TextDecoder().decode(new Uint8Array(bytes)));
    bytes = [];
  };
  const chars = [...text];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i];
    if (mode === "single") {
      if (c === "'") mode = "plain";
      else bytes.push(...encoder.encode(c));
    } else if (mode === "double") {
      if (c === '"') mode = "plain";
      else bytes.push(...encoder.encode(c));
    } else if (c === "'") mode = "single";
    else if (c === '"') mode = "double";
    else if (c === "\\") {
      if (i + 1 < chars.length) bytes.push(...encoder.encode(chars[++i]));
    } else if (c === "%" && HEX.test(chars[i + 1] ?? "") && HEX.test(chars[i + 2] ?? "")) {
      bytes.push(parseInt(chars[i + 1] + chars[i + 2], 16));
      i += 2;
    } else if (delimiter.includes(c)) finish();
    else bytes.push(...encoder.encode(c));
  }
  finish();
  return elements;
}

/** The result of {@linkcode parseOptions}: the address and the value of each option given. */
export interface ParsedOptions<Name extends string> {
  address: string;
  /** Options given; a bare key has the value "". */
  options: Partial<Record<Name, string>>;
}

/**
 * Parses `address/key=value/key` against the option names of a scheme, in
 * the order the scheme lists them (a key picks the first name it prefixes).
 */
export function parseOptions<Name extends string>(
  scheme: string,
  rest: string,
  names: readonly Name[],
): ParsedOptions<Name> {
  if (rest === "") return { address: "", options: {} };
  const [address, ...elements] = splitQuoted(rest, "/");
  const options: Partial<Record<Name, string>> = {};
  for (const element of elements) {
    const equals = element.indexOf("=");
    const key = equals < 0 ? element : element.slice(0, equals);
    if (key === "") continue;
    const name = names.find((candidate) => candidate.startsWith(key));
    if (name === undefined) {
      throw new VnlError(
        `Unknown key in ${scheme}:// VNL: ${key}; valid options are ${names.join(", ")}`,
      );
    }
    options[name] = equals < 0 ? "" : element.slice(equals + 1);
  }
  return { address, options };
}

/** A VNL with a nested one: `outer{inner}` splits at the first `{` and the last `}`. */
export function splitNested(rest: string): { outer: string; inner: string } | undefined {
  const open = indexUnquoted(rest, "{");
  const close = rest.lastIndexOf("}");
  if (open < 0 || close < open) return undefined;
  return { outer: rest.slice(0, open), inner: rest.slice(open + 1, close) };
}

function indexUnquoted(text: string, wanted: string): number {
  let mode: "plain" | "single" | "double" = "plain";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (mode === "single") mode = c === "'" ? "plain" : mode;
    else if (mode === "double") mode = c === '"' ? "plain" : mode;
    else if (c === "'") mode = "single";
    else if (c === '"') mode = "double";
    else if (c === "\\") i++;
    else if (c === wanted) return i;
  }
  return -1;
}

/**
 * A number in C `strtoull` base-0 form (`0x1f`, `017`, `42`) with an optional
 * k/m/g/t multiplier (powers of 1024), as vdeplug4's option values take.
 */
export function parseSize(text: string, what: string): number {
  const match = /^\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtT]?)$/.exec(text);
  if (!match) {
    throw new VnlError(
      `Bad ${what}: ${JSON.stringify(text)}; expected a number such as 4M or 65536`,
    );
  }
  const [, digits, suffix] = match;
  const base = digits.startsWith("0x") || digits.startsWith("0X")
    ? parseInt(digits.slice(2), 16)
    : digits.length > 1 && digits.startsWith("0")
    ? parseInt(digits.slice(1), 8)
    : digits === "0"
    ? 0
    : parseInt(digits, 10);
  const power = " kmgt".indexOf(suffix.toLowerCase() || " ");
  return base * 1024 ** power;
}

/** An integer within [min, max], or a VnlError naming the option. */
export function parseInteger(text: string, what: string, min: number, max: number): number {
  const value = /^\s*-?\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new VnlError(
      `Bad ${what}: ${JSON.stringify(text)}; expected an integer from ${min} to ${max}`,
    );
  }
  return value;
}

/** A group name or number as vdeplug4 reads it: a number, a name from /etc/group, "" for ours. */
export function groupId(text: string, what: string): number {
  if (/^\d+$/.test(text)) return Number(text);
  if (text === "") return processGroupId();
  try {
    for (const line of readTextFile("/etc/group").split("\n")) {
      const [name, , gid] = line.split(":");
      if (name === text && gid !== undefined) return Number(gid);
    }
  } catch {
    // No group database: fall through to the error below.
  }
  throw new VnlError(`Bad ${what}: ${JSON.stringify(text)} is neither a number nor a group name`);
}
