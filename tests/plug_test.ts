/** vdeno plug's life cycle: daemon and pidfile, signals, and the ends going away. */

import assert from "node:assert/strict";
import { controlDirectory } from "../app/control.ts";
import { captureUdp } from "./_capture.ts";
import { hostTest, Lan, sleep, VDENO, waitUntil } from "./_harness.ts";

const controlSocket = (name: string) => `${controlDirectory()}/${name}.sock`;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  hostTest(`on ${signal} a plug says goodbye, removes its TAP, pidfile and socket, and exits 0`, [
    "tcpdump",
  ], async () => {
    await using lan = await Lan.create(1);
    const [a] = lan.hosts;
    const pidfile = await Deno.makeTempFile();
    const name = `sig-${signal.toLowerCase()}`;
    const plug = a.vdeno(["plug", "-p", pidfile, "-n", name, "tap://tapq", "vxvde://239.7.0.1"]);
    await a.waitForLink("tapq");
    await waitUntil("the control socket", () => exists(controlSocket(name)));
    assert.equal(Number(Deno.readTextFileSync(pidfile)), plug.child.pid);
    let code = -1;
    const seen = await captureUdp(a, "eth0", async () => {
      code = (await plug.stop(signal)).code;
    });
    assert.equal(code, 0);
    assert.ok(
      seen.some((d) => d.length === 8 && d.destination === "239.7.0.1.14789"),
      JSON.stringify(seen),
    );
    assert.notEqual((await a.run(["ip", "link", "show", "tapq"])).code, 0, "the TAP is gone");
    assert.ok(!exists(pidfile), "pidfile removed");
    assert.ok(!exists(controlSocket(name)), "control socket removed");
  });
}

hostTest("-d returns once the plugs are open and leaves a daemon that -p names", [], async () => {
  await using lan = await Lan.create(1);
  const [a] = lan.hosts;
  const pidfile = await Deno.makeTempFile();
  await a.sh([
    ...VDENO,
    "plug",
    "-d",
    "-p",
    pidfile,
    "-n",
    "daemon-test",
    "tap://tapd",
    "vxvde://239.7.0.2",
  ]);
  const pid = Number(Deno.readTextFileSync(pidfile));
  assert.ok(pid > 0);
  assert.equal((await a.run(["ip", "link", "show", "tapd"])).code, 0, "the daemon holds the TAP");
  await a.sh(["kill", String(pid)]);
  for (let i = 0; i < 100 && exists(pidfile); i++) await sleep(50);
  assert.ok(!exists(pidfile));
  const failed = await a.run([...VDENO, "plug", "-d", "tap://tapd", "vxvde://10.1.1.1"]);
  assert.notEqual(failed.code, 0, "an error in the daemon reaches the caller");
  assert.match(failed.stderr, /not a multicast address/);
});

hostTest(
  "a TAP deleted under a running plug ends it with one clear line and a non-zero exit",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [a] = lan.hosts;
    const plug = a.vdeno(["plug", "tap://tapx", "vxvde://239.7.0.3"]);
    await a.waitForLink("tapx");
    await a.sh(["ip", "link", "del", "tapx"]);
    const status = await plug.exited();
    assert.notEqual(status.code, 0);
    assert.equal(plug.stderr.trim(), "vdeno plug: tap://tapx was deleted");
  },
);

hostTest(
  "when the command of = COMMAND dies, vdeno says so in one line and exits non-zero",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [a] = lan.hosts;
    const plug = a.vdeno(["plug", "vxvde://239.7.0.4", "=", "sh", "-c", "sleep 0.3; kill -9 $$"]);
    assert.notEqual((await plug.exited()).code, 0);
    assert.equal(plug.stderr.trim(), "vdeno plug: the command sh was killed by signal 9");
    const clean = a.vdeno(["plug", "vxvde://239.7.0.4", "=", "true"]);
    assert.equal((await clean.exited()).code, 0, "a command that ends well ends the plug well");
  },
);

hostTest("--log-level info logs start and stop on stderr with time and level", [], async () => {
  await using lan = await Lan.create(1);
  const [a] = lan.hosts;
  const plug = a.vdeno([
    "plug",
    "--log-level",
    "info",
    "-n",
    "logged",
    "tap://tapl",
    "vxvde://239.7.0.5",
  ]);
  await plug.waitForOutput((text) => text.includes("plug started"));
  assert.equal((await plug.stop("SIGTERM")).code, 0);
  const lines = plug.stderr.trim().split("\n");
  assert.match(
    lines[0],
    /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z vdeno info: plug started: tap:\/\/tapl <-> vxvde:\/\/239\.7\.0\.5$/,
  );
  assert.match(lines.at(-1)!, /vdeno info: plug stopped: on a signal$/);
  const quiet = a.vdeno(["plug", "tap://tapm", "vxvde://239.7.0.5"]);
  await a.waitForLink("tapm", undefined, quiet);
  assert.equal((await quiet.stop("SIGTERM")).code, 0);
  assert.equal(quiet.stderr, "", "the default level (warn) says nothing on a clean run");
});
