/** Bad command lines and missing privileges get one clear line and a non-zero exit. */

import assert from "node:assert/strict";
import { hostTest, Lan, run, VDENO } from "./_harness.ts";

const cases: [string[], RegExp][] = [
  [["plug"], /plug takes one or two VNLs/],
  [["plug", "--bogus", "vxvde://"], /Unknown option '--bogus'/],
  [["plug", "nonsense"], /Not a VNL: "nonsense"/],
  [["plug", "bogus://x", "vxvde://"], /Unknown VNL scheme bogus:\/\//],
  [["plug", "vxvde://239.0.0.1/colour=red"], /Unknown key in vxvde:\/\/ VNL: colour/],
  [["plug", "vxvde://10.1.2.3"], /not a multicast address/],
  [["plug", "vxvde://239.0.0.1/port=70000"], /Bad port: "70000"/],
  [["plug", "vxvde://239.0.0.1/ttl=-1"], /Bad ttl/],
  [["plug", "vxvde://239.0.0.1/vni=99999999"], /24 bits/],
  [["plug", "vxvde://239.0.0.1/rcvbuf=lots"], /Bad rcvbuf/],
  [["plug", "vxvde://239.0.0.1/if=nosuchif0"], /No network interface named nosuchif0/],
  [["plug", "vxvde://239.0.0.1/bind=10.255.255.1"], /Cannot bind 10\.255\.255\.1/],
  [["plug", "tap://", "vxvde://"], /Missing interface name/],
  [["plug", "tap://a-name-much-too-long", "vxvde://"], /at most 15 bytes/],
  [["plug", "vxvde://", "pcap:///no/such/dir/x.pcap"], /Cannot write capture file/],
  [["plug", "vxvde://", "=", "/no/such/program"], /\/no\/such\/program/],
  [["status", "no-such-plug"], /No running plug named no-such-plug/],
  [["frobnicate"], /unknown command "frobnicate"/],
  [["plug", "--log-level", "loud", "vxvde://"], /Bad log level: loud/],
  [["plug", "-x", "vxvde://"], /Unknown option '-x'/],
  [["plug", "vxvde://", "vxvde://", "vxvde://"], /plug takes one or two VNLs/],
  [["plug", "vxvde://239.0.0.256"], /Bad vxvde group address: "239\.0\.0\.256"/],
  [["plug", "vxvde://ff05::1/v4"], /Bad vxvde group address: "ff05::1"; expected a numeric IPv4/],
  [["plug", "vxvde://239.0.0.1/bind=nowhere"], /Bad bind address: "nowhere"/],
  [["plug", "vxvde://239.0.0.1/port=0"], /Bad port: "0"; expected an integer from 1 to 65535/],
  [["plug", "vxvde://239.0.0.1/ttl=256"], /Bad ttl: "256"; expected an integer from 0 to 255/],
  [["plug", "vxvde://239.0.0.1/vni=16777216"], /Bad vni: 16777216; a VNI has 24 bits/],
  [["plug", "vxvde://239.0.0.1/hashsize=0"], /Bad hashsize: "0"/],
  [["plug", "vxvde://239.0.0.1/expiretime=soon"], /Bad expiretime: "soon"/],
  [["plug", "udp://5000->127.0.0.1:70000"], /Bad remote port in udp:\/\/ VNL: "70000"/],
  [["plug", "udp://70000->127.0.0.1:5000"], /Bad local port in udp:\/\/ VNL: "70000"/],
  [["plug", "qemu://127.0.0.1:70000"], /Bad port in qemu:\/\/ VNL: 70000/],
  [["plug", "vxvde://239.0.0.1/key='/no/such/key'"], /Cannot read key file \/no\/such\/key/],
  [["plug", "vxvde://239.0.0.1/key=env:VDENO_NO_SUCH_KEY"], /VDENO_NO_SUCH_KEY is not set/],
  [["plug", "agno:///no/such/key{vxvde://}"], /Cannot read agno key file \/no\/such\/key/],
  [["plug", "-p", "/no/such/dir/pid", "vxvde://"], /Cannot write pidfile \/no\/such\/dir\/pid/],
  // A newline in the input is escaped, so the error stays one line.
  [["plug", "vxvde://239.0.0.1/col\nour=red"], /Unknown key in vxvde:\/\/ VNL: col\\nour/],
];

hostTest(
  "every bad command line is answered by one clear line and a non-zero exit",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    for (const [args, expected] of cases) {
      const result = await host.run([...VDENO, ...args], { timeoutMs: 20_000 });
      const lines = result.stderr.trim().split("\n");
      assert.notEqual(result.code, 0, `${args.join(" ")} must fail`);
      assert.equal(lines.length, 1, `${args.join(" ")}: one line, got:\n${result.stderr}`);
      assert.match(lines[0], expected, args.join(" "));
      assert.doesNotMatch(result.stderr, /\n\s+at /, "no stack trace");
    }
    await host.sh(["ip", "route", "del", "224.0.0.0/4"]);
    await host.sh(["ip", "link", "set", "eth0", "down"]);
    const noRoute = await host.run([...VDENO, "plug", "vxvde://239.0.0.1", "vxvde://239.0.0.2"]);
    assert.notEqual(noRoute.code, 0);
    assert.match(noRoute.stderr.trim(), /^vdeno plug: .*no interface to join it on; add a route/);
  },
);

hostTest(
  "an unprivileged user who may not create a TAP is told what to do",
  ["setpriv"],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    const asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--reset-env"];
    const result = await host.run([...asNobody, ...VDENO, "plug", "tap://tapn", "vxvde://"], {
      timeoutMs: 20_000,
    });
    assert.notEqual(result.code, 0);
    const lines = result.stderr.trim().split("\n");
    assert.equal(lines.length, 1, result.stderr);
    assert.match(
      lines[0],
      /Cannot open tap:\/\/tapn: (not permitted.*ip tuntap add mode tap name tapn user|\/dev\/net\/tun: Permission denied \(it is mode 0\d+)/,
    );
  },
);

Deno.test("vdeno --version and --help answer and exit 0", async () => {
  const version = await run([...VDENO, "--version"]);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^vdeno \d+\.\d+\.\d+/);
  const help = await run([...VDENO, "plug", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /vdeno plug \[OPTIONS\] VNL VNL/);
});
