/** VNL parsing follows vdeplug4: prefix-matched keys, quoting, %XX, nesting, C number forms. */

import assert from "node:assert/strict";
import {
  parseOptions,
  parseSize,
  splitNested,
  splitQuoted,
  splitVnl,
  VnlError,
} from "../core/vnl.ts";
import { parseVxvde, vxvdeHeader } from "../plugs/vxvde.ts";
import { openPlug } from "../plugs/open.ts";

const NAMES = [
  "port",
  "vni",
  "grp",
  "ttl",
  "rcvbuf",
  "v6",
  "v4",
  "hashsize",
  "expiretime",
  "if",
  "bind",
] as const;

Deno.test("a VNL splits into scheme and the rest at the first ://", () => {
  assert.deepEqual(splitVnl("vxvde://239.0.0.1/port=5"), {
    scheme: "vxvde",
    rest: "239.0.0.1/port=5",
  });
  assert.deepEqual(splitVnl("tap://tap0"), { scheme: "tap", rest: "tap0" });
  assert.throws(() => splitVnl("no-scheme-here"), VnlError);
  // A scheme names a plugin file for libvdeplug: no path in it.
  assert.throws(() => splitVnl("../../tmp/evil://x"), /Not a VNL scheme: "\.\.\/\.\.\/tmp\/evil"/);
  assert.throws(() => splitVnl("tap\0x://tap0"), VnlError);
});

Deno.test("a VNL for libvdeplug with a NUL byte is refused, not cut short", () => {
  assert.throws(() => openPlug("slirp://\0/tmp/sw"), /A VNL cannot contain a NUL byte/);
});

Deno.test("a VNL file holds the VNL on its first line", () => {
  const path = Deno.makeTempFileSync();
  try {
    Deno.writeTextFileSync(path, "vxvde://239.4.4.4/vni=9\nignored\n");
    assert.deepEqual(splitVnl(path), { scheme: "vxvde", rest: "239.4.4.4/vni=9" });
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("option keys match by prefix, in the scheme's order", () => {
  const { address, options } = parseOptions(
    "vxvde",
    "239.1.1.1/p=5000/v/t=3/h=64/e=9/i=eth1",
    NAMES,
  );
  assert.equal(address, "239.1.1.1");
  assert.deepEqual(options, {
    port: "5000",
    vni: "",
    ttl: "3",
    hashsize: "64",
    expiretime: "9",
    if: "eth1",
  });
});

Deno.test("an unknown key is an error that names the key", () => {
  assert.throws(() => parseOptions("vxvde", "239.1.1.1/colour=red", NAMES), /Unknown key.*colour/);
});

Deno.test("empty keys are ignored, bare keys have an empty value", () => {
  assert.deepEqual(parseOptions("vxvde", "//v6//=x", NAMES).options, { v6: "" });
});

Deno.test("quotes, backslashes and %XX protect and encode bytes", () => {
  assert.deepEqual(splitQuoted("a'/b'/c\\/d/e%2Ff/\"g/h\"", "/"), ["a/b", "c/d", "e/f", "g/h"]);
  assert.deepEqual(splitQuoted("100%/x%zz", "/"), ["100%", "x%zz"]);
  assert.deepEqual(splitQuoted("", "/"), [""]);
});

Deno.test("a nested VNL stands between the first { and the last }", () => {
  assert.deepEqual(splitNested("/key/ethtype=copy{vxvde://239.0.0.1/vni=3}"), {
    outer: "/key/ethtype=copy",
    inner: "vxvde://239.0.0.1/vni=3",
  });
  assert.deepEqual(splitNested("a{b{c}}"), { outer: "a", inner: "b{c}" });
  assert.equal(splitNested("plain"), undefined);
});

Deno.test("sizes take C strtoull forms and k/m/g/t multipliers", () => {
  assert.equal(parseSize("4M", "rcvbuf"), 4 * 1024 * 1024);
  assert.equal(parseSize("0x10k", "rcvbuf"), 16 * 1024);
  assert.equal(parseSize("010", "rcvbuf"), 8);
  assert.equal(parseSize("0", "rcvbuf"), 0);
  assert.throws(() => parseSize("lots", "rcvbuf"), /Bad rcvbuf/);
});

Deno.test("vxvde defaults: 239.0.0.1 or ff05:56de::1, port 14789, VNI 1, TTL 1", () => {
  const v4 = parseVxvde("");
  assert.equal(v4.group.toString(), "239.0.0.1:14789");
  assert.equal(v4.vni, 1);
  assert.equal(v4.ttl, 1);
  assert.equal(v4.expireSeconds, 128);
  assert.equal(v4.hashSize, 1024);
  assert.equal(parseVxvde("/v6").group.toString(), "[ff05:56de::1]:14789");
  assert.equal(parseVxvde("/v4/v6").group.toString(), "239.0.0.1:14789");
});

Deno.test("grp sets the VNI and the last three bytes of the group", () => {
  const config = parseVxvde("239.0.0.1/grp=70000");
  assert.equal(config.vni, 70000);
  assert.equal(config.group.toString(), "239.1.17.112:14789");
  assert.equal(parseVxvde("239.0.0.1/grp=70000/vni=5").vni, 5);
  const v6 = parseVxvde("ff05::/grp=258");
  assert.equal(v6.group.toString(), "[ff05::102]:14789");
});

Deno.test("bad vxvde values are refused with the option named", () => {
  assert.throws(() => parseVxvde("10.0.0.1"), /not a multicast address/);
  assert.throws(() => parseVxvde("239.0.0.1/port=70000"), /Bad port/);
  assert.throws(() => parseVxvde("239.0.0.1/ttl=300"), /Bad ttl/);
  assert.throws(() => parseVxvde("239.0.0.1/vni=16777216"), /24 bits/);
  assert.throws(() => parseVxvde("239.0.0.1/v6"), /IPv6/);
  assert.throws(() => parseVxvde("not.an.address"), /Bad vxvde group address/);
  assert.throws(() => parseVxvde("239.0.0.1/vni=nosuchgroup"), /neither a number nor a group/);
});

Deno.test("vni takes a group name from /etc/group", () => {
  const line = Deno.readTextFileSync("/etc/group").split("\n").find((l) => l.startsWith("root:"));
  if (line) assert.equal(parseVxvde("239.0.0.1/vni=root").vni, 0);
});

Deno.test("the vxvde header is flags 0x08, three zero bytes, the 24-bit VNI, a zero byte", () => {
  assert.deepEqual([...vxvdeHeader(1)], [8, 0, 0, 0, 0, 0, 1, 0]);
  assert.deepEqual([...vxvdeHeader(0xabcdef)], [8, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
});
