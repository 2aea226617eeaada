/**
 * `slirp://` (Debian's libvdeplug-slirp, through libvdeplug) makes one member
 * of a cloud its NAT gateway: a `vdeno ns` member gets a DHCP lease from it
 * with busybox udhcpc and reaches, through the gateway 10.0.2.2, a TCP service
 * on the loopback of the host where the slirp plug runs; and `vdeno ns
 * slirp://` does the same for the namespace alone, as `vdens slirp://` does.
 * Nothing leaves the test's namespaces.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, type Process, requirements, VDENO } from "./_harness.ts";

const CLOUD = "vxvde://234.0.0.1";
const SERVICE_PORT = 7777;
const GREETING = "hello from the gateway's loopback";

// A TCP service on the gateway host's loopback: one line to every client.
const SERVICE = `
const listener = Deno.listen({ hostname: "127.0.0.1", port: ${SERVICE_PORT} });
console.log("listening");
for await (const connection of listener) {
  await connection.write(new TextEncoder().encode(${JSON.stringify(GREETING + "\n")}));
  connection.close();
}
`;

/** udhcpc's script: applies the lease and prints it. */
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "$router" dev "$interface"
    echo "lease $ip/$mask router $router dns $dns"
    ;;
esac
`;

function slirpInstalled(): boolean {
  try {
    Deno.statSync("/usr/lib/x86_64-linux-gnu/vdeplug/libvdeplug_slirp.so");
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs udhcpc and then the TCP client in a `vdeno ns` on `vnl`, in `member`, with the service on
 * `gateway`'s loopback (the same host when the namespace itself is on slirp://).
 */
async function leaseAndReach(gateway: Host, member: Host, vnl: string, slirp?: Process) {
  const directory = await Deno.makeTempDir({ prefix: "vdeno-slirp-" });
  try {
    const script = `${directory}/udhcpc.sh`;
    await Deno.writeTextFile(script, UDHCPC_SCRIPT, { mode: 0o755 });
    await Deno.chmod(directory, 0o755);
    const service = gateway.spawn([Deno.execPath(), "eval", SERVICE]);
    await service.waitForOutput((text) => text.includes("listening"));
    const inside = [
      "ip link set vde0 up",
      `busybox udhcpc -i vde0 -n -q -t 20 -T 1 -s ${script}`,
      "ip route",
      `busybox nc 10.0.2.2 ${SERVICE_PORT} </dev/null`,
    ].join(" && ");
    const result = await member.run([...VDENO, "ns", vnl, "sh", "-c", inside], {
      timeoutMs: 90_000,
    });
    const said = `vdeno ns said:\n${result.stdout}${result.stderr}\nslirp plug said: ${
      slirp?.stderr ?? "-"
    }`;
    assert.equal(result.code, 0, said);
    assert.match(
      result.stdout,
      /^lease 10\.0\.2\.\d+\/24 router 10\.0\.2\.2 dns 10\.0\.2\.3$/m,
      said,
    );
    assert.match(result.stdout, /^default via 10\.0\.2\.2 dev vde0/m, said);
    assert.match(result.stdout, new RegExp(`^${GREETING}$`, "m"), said);
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

const NEEDS = requirements(["busybox"], [
  { ok: slirpInstalled(), why: "libvdeplug-slirp is not installed" },
]);

hostTest(
  "slirp:// makes a member the cloud's gateway: DHCP lease, then the host's loopback through 10.0.2.2",
  NEEDS,
  async () => {
    await using lan = await Lan.create(2);
    const [gateway, member] = lan.hosts;
    const slirp = gateway.vdeno(["plug", "slirp://", CLOUD]);
    await leaseAndReach(gateway, member, CLOUD, slirp);
  },
);

hostTest(
  "vdeno ns slirp://, as vdens slirp://: the namespace gets a lease and the host's loopback",
  NEEDS,
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    await leaseAndReach(host, host, "slirp://");
  },
);
