/**
 * systemd's Type=notify readiness: vdeno sends READY=1 to $NOTIFY_SOCKET once
 * its plugs are open and STOPPING=1 when it closes them. No systemd runs here:
 * a real Unix datagram socket (socat) stands where systemd would listen.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, type Process, sleep } from "./_harness.ts";

/** Binds a Unix datagram socket in `host` with socat and resolves once it listens. */
async function listen(host: Host, address: string): Promise<Process> {
  const abstract = address.startsWith("@");
  const socat = host.spawn([
    "socat",
    "-u",
    abstract ? `ABSTRACT-RECV:${address.slice(1)}` : `UNIX-RECV:${address}`,
    "STDOUT",
  ]);
  for (let waited = 0;; waited += 50) {
    const bound = abstract
      ? (await host.sh(["cat", "/proc/net/unix"])).includes(address)
      : (await host.run(["test", "-S", address])).code === 0;
    if (bound) return socat;
    if (waited > 10_000) throw new Error(`socat did not bind ${address}: ${socat.stderr}`);
    await sleep(50);
  }
}

hostTest(
  "vdeno plug sends READY=1 to a $NOTIFY_SOCKET path once its TAP exists, STOPPING=1 on SIGTERM",
  ["socat"],
  async () => {
    const directory = await Deno.makeTempDir({ prefix: "vdeno-notify-" });
    try {
      await using lan = await Lan.create(1);
      const [a] = lan.hosts;
      const socket = `${directory}/notify`;
      const listener = await listen(a, socket);
      const plug = a.vdeno([
        "plug",
        "--name",
        `notify-${Deno.pid}`,
        "tap://tap0",
        "vxvde://239.4.10.1",
      ], {
        env: { NOTIFY_SOCKET: socket },
      });
      await listener.waitForOutput((text) => text.includes("READY=1"), 30_000);
      assert.equal(
        (await a.run(["ip", "link", "show", "tap0"])).code,
        0,
        "the TAP exists when READY=1 arrives",
      );
      assert.match(
        listener.stdout,
        /^READY=1\nSTATUS=Forwarding tap:\/\/tap0 <-> vxvde:\/\/239\.4\.10\.1\n$/,
      );
      assert.equal((await plug.stop("SIGTERM")).code, 0);
      await listener.waitForOutput((text) => text.includes("STOPPING=1"));
      assert.match(listener.stdout, /READY=1[\s\S]*\nSTOPPING=1\n$/);
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);

hostTest("a plug that cannot open sends no READY=1 and exits 1", ["socat"], async () => {
  await using lan = await Lan.create(1);
  const [a] = lan.hosts;
  const socket = `@vdeno-notify-${Deno.pid}-fail`;
  const listener = await listen(a, socket);
  const plug = a.vdeno(["plug", "tap://tap0", "vxvde://239.4.10.2/if=nosuchif0"], {
    env: { NOTIFY_SOCKET: socket },
  });
  const status = await plug.exited();
  assert.equal(status.code, 1);
  assert.match(plug.stderr, /nosuchif0/);
  await sleep(200);
  assert.equal(listener.stdout, "", "nothing was sent to the service manager");
});

hostTest(
  "vdeno ns sends READY=1 to an abstract $NOTIFY_SOCKET once its command runs, STOPPING=1 after",
  ["socat", "unshare"],
  async () => {
    await using lan = await Lan.create(1);
    const [a] = lan.hosts;
    const socket = `@vdeno-notify-${Deno.pid}-ns`;
    const listener = await listen(a, socket);
    const ns = a.vdeno(
      ["ns", "vxvde://239.4.10.3", "sh", "-c", "ip link show vde0 && echo inside; exec sleep 600"],
      { env: { NOTIFY_SOCKET: socket } },
    );
    await listener.waitForOutput((text) => text.includes("READY=1"), 30_000);
    await ns.waitForOutput((text) => text.includes("inside"), 10_000);
    assert.match(listener.stdout, /^READY=1\nSTATUS=Running sh -c /);
    assert.equal((await ns.stop("SIGTERM")).code, 143, "the command's status: killed by SIGTERM");
    await listener.waitForOutput((text) => text.includes("STOPPING=1"));
  },
);
