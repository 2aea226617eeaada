/**
 * `vlan://`, vdeno's own and through libvdeplug (`vdeplug://`, vdeplug4's
 * plugins by FFI), against vde_plug with libvdeplug-vlan: members of one VLAN
 * ping, the tags seen on the cloud; and the one-line errors of the libvdeplug
 * path.
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

const CLOUD = "vxvde://239.5.5.5";
const VLAN_CASES = [
  {
    name: "vlan:// (vdeno's own): vdeno and vde_plug on VLAN 5 ping, tagged on the cloud",
    vdeno: `vlan://5{${CLOUD}}`,
    peer: `vlan://5{${CLOUD}}`,
    other: `vlan://6{${CLOUD}}`,
    tag: "vlan 5, p 0, ethertype IPv4",
  },
  {
    name: "vlan:// through libvdeplug (vdeplug://): vdeno and vde_plug on VLAN 5 ping, tagged",
    vdeno: `vdeplug://vlan://5{${CLOUD}}`,
    peer: `vlan://5{${CLOUD}}`,
    other: `vlan://6{${CLOUD}}`,
    tag: "vlan 5, p 0, ethertype IPv4",
  },
  {
    name: "vlan:// QinQ: VLAN 4 inside 802.1ad VLAN 5, vdeno and vde_plug ping, both tags seen",
    vdeno: `vlan://4{vlan://5/qinq{${CLOUD}}}`,
    peer: `vlan://4{vlan://5/qinq{${CLOUD}}}`,
    other: `vlan://6{vlan://5/qinq{${CLOUD}}}`,
    tag: "vlan 5, p 0, ethertype 802.1Q (0x8100), vlan 4, p 0, ethertype IPv4",
  },
];

for (const { name, vdeno: vdenoVnl, peer, other: otherVnl, tag } of VLAN_CASES) {
  hostTest(
    name,
    requirements(["vde_plug", "ping", "tcpdump"], [
      { ok: hasPlugin("vlan"), why: "libvdeplug-vlan is not installed" },
    ]),
    async () => {
      await using lan = await Lan.create(3);
      const [a, b, c] = lan.hosts;
      const vdeno = a.vdeno(["plug", "tap://tap0", vdenoVnl]);
      b.spawn(["vde_plug", "tap://tap0", peer]);
      // A member of the same cloud on another VLAN hears none of it.
      const other = c.vdeno(["plug", "tap://tap0", otherVnl]);
      await a.waitForLink("tap0", 30_000, vdeno);
      await b.waitForLink("tap0");
      await c.waitForLink("tap0", 30_000, other);
      await a.configure("tap0", "10.0.0.1/24");
      await b.configure("tap0", "10.0.0.2/24");
      await c.configure("tap0", "10.0.0.3/24");
      const tcpdump = a.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", "-e", "-T", "vxlan", "udp"]);
      await tcpdump.waitForOutput((text) => text.includes("listening on"));
      assert.ok(await a.pingable("10.0.0.2", 20_000), `vdeno (${vdenoVnl}) cannot ping vde_plug`);
      assert.ok(await b.pingable("10.0.0.1", 20_000), `vde_plug cannot ping vdeno (${vdenoVnl})`);
      assert.ok(!(await a.pingable("10.0.0.3", 3000)), "a member of another VLAN answered");
      await sleep(300);
      await tcpdump.stop("SIGINT");
      const request = tcpdump.stdout.split("\n").find((line) =>
        line.includes("10.0.0.1 > 10.0.0.2: ICMP echo request")
      );
      const reply = tcpdump.stdout.split("\n").find((line) =>
        line.includes("10.0.0.2 > 10.0.0.1: ICMP echo reply")
      );
      assert.ok(request?.includes(tag), `request not tagged "${tag}": ${request}`);
      assert.ok(reply?.includes(tag), `reply not tagged "${tag}": ${reply}`);
    },
  );
}

hostTest(
  "a scheme no plugin knows, or a plugin that refuses: one line, naming the package or the schemes known",
  requirements([], [{ ok: hasPlugin("slirp"), why: "libvdeplug-slirp is not installed" }], {
    root: false,
  }),
  async () => {
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
    const lists =
      /^vdeno plug: Unknown VNL scheme nosuchscheme:\/\/; vdeno knows (.*); libvdeplug plugins installed: (.*)\n$/
        .exec(unknown.stderr);
    assert.ok(lists, unknown.stderr);
    for (const scheme of ["vxvde", "tap", "vde", "cmd", "null", "vlan", "vdeplug"]) {
      assert.ok(lists[1].split(", ").includes(`${scheme}://`), `vdeno's list lacks ${scheme}://`);
    }
    for (const scheme of ["slirp", "hub", "switch"]) {
      assert.ok(lists[2].split(", ").includes(`${scheme}://`), `plugins list lacks ${scheme}://`);
    }
    // A plugin's own complaint joins vdeno's line instead of a line of its own.
    // With only the permissions of vdeno's design: the capture goes through libc too.
    const twoFlags = [Deno.execPath(), "run", "--allow-net", "--allow-ffi", "--quiet"];
    const main = new URL("../main.ts", import.meta.url).pathname;
    const refused = await run([...twoFlags, main, "plug", "slirp:///colour=red", "null://"]);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /^vdeno plug: Cannot open slirp:\/\/\/colour=red through libvdeplug: Invalid argument \(the plugin said: .*colour\)\n$/,
    );
  },
);
