/**
 * Schemes vdeno opens through libvdeplug (vdeplug4's plugins, by FFI), each
 * against the C tools: `vlan://` members of vdeno and vde_plug on one VLAN,
 * the tag seen on the cloud.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, requirements, run, sleep, VDENO } from "./_harness.ts";

const hasPlugin = (scheme: string) => {
  try {
    Deno.statSync(`/usr/lib/x86_64-linux-gnu/vdeplug/libvdeplug_${scheme}.so`);
    return true;
  } catch {
    return false;
  }
};

hostTest(
  "vlan:// through libvdeplug: vdeno and vde_plug on VLAN 5 ping, tagged on the cloud",
  requirements(["vde_plug", "ping", "tcpdump"], [
    { ok: hasPlugin("vlan"), why: "libvdeplug-vlan is not installed" },
  ]),
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const vnl = "vlan://5{vxvde://239.5.5.5}";
    const vdeno = a.vdeno(["plug", "tap://tap0", vnl]);
    b.spawn(["vde_plug", "tap://tap0", vnl]);
    // A member of the same cloud on another VLAN hears none of it.
    const other = c.vdeno(["plug", "tap://tap0", "vlan://6{vxvde://239.5.5.5}"]);
    await a.waitForLink("tap0", 30_000, vdeno);
    await b.waitForLink("tap0");
    await c.waitForLink("tap0", 30_000, other);
    await a.configure("tap0", "10.0.0.1/24");
    await b.configure("tap0", "10.0.0.2/24");
    await c.configure("tap0", "10.0.0.3/24");
    const tcpdump = a.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", "-e", "-T", "vxlan", "udp"]);
    await tcpdump.waitForOutput((text) => text.includes("listening on"));
    assert.ok(await a.pingable("10.0.0.2", 20_000), "vdeno on VLAN 5 cannot ping vde_plug");
    assert.ok(await b.pingable("10.0.0.1", 20_000), "vde_plug on VLAN 5 cannot ping vdeno");
    assert.ok(!(await a.pingable("10.0.0.3", 3000)), "a member of VLAN 6 answered on VLAN 5");
    await sleep(300);
    await tcpdump.stop("SIGINT");
    assert.match(tcpdump.stdout, /vlan 5\b.*10\.0\.0\.1 > 10\.0\.0\.2: ICMP echo request/);
    assert.match(tcpdump.stdout, /vlan 5\b.*10\.0\.0\.2 > 10\.0\.0\.1: ICMP echo reply/);
  },
);

Deno.test("a scheme no plugin knows: one line naming the package, or the schemes known", async () => {
  const missing = await run([...VDENO, "plug", "slirp://", "null://"], {
    env: { VDEPLUGIN_PATH: "/nonexistent" },
  });
  assert.equal(missing.code, 1);
  assert.equal(
    missing.stderr.trim(),
    "vdeno plug: No libvdeplug plugin for slirp:// is installed: install Debian package libvdeplug-slirp",
  );
  const unknown = await run([...VDENO, "plug", "nosuchscheme://x", "null://"]);
  assert.equal(unknown.code, 1);
  assert.match(
    unknown.stderr,
    /^vdeno plug: Unknown VNL scheme nosuchscheme:\/\/; vdeno knows vxvde:\/\/, .*vde:\/\/, cmd:\/\/, null:\/\/, vdeplug:\/\/; libvdeplug plugins installed: .*\n$/,
  );
});
