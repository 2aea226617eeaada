/**
 * vdeno runs with exactly `deno run --allow-net --allow-ffi`: what it needs
 * beyond the network (the environment, files, the interface list, starting
 * itself again) goes through libc. A permission Deno still refuses is one line
 * that names the flag. (The library: tests/library_test.ts.)
 */

import assert from "node:assert/strict";
import { hostTest, Lan, run, VDENO } from "./_harness.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
/** vdeno with only the two permissions of the design. */
const TWO_FLAGS = [Deno.execPath(), "run", "--allow-net", "--allow-ffi", "--quiet", MAIN];

hostTest(
  "plug -d (with --metrics), status and ns run with exactly --allow-net --allow-ffi",
  ["ping", "unshare", "curl"],
  async () => {
    const runtime = await Deno.makeTempDir({ prefix: "vdeno-perm-" });
    const env = ["env", `XDG_RUNTIME_DIR=${runtime}`];
    try {
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      // -d returns once the plugs are open: the TAP is there for the next command.
      const started = await a.run([
        ...env,
        ...TWO_FLAGS,
        "plug",
        "-d",
        "--name",
        "twoflags",
        "--metrics",
        "127.0.0.1:9464",
        "tap://tap0",
        "vxvde://239.7.0.1",
      ]);
      assert.equal(started.code, 0, started.stderr);
      assert.equal(started.stderr, "");
      await a.configure("tap0", "10.0.0.1/24");
      b.vdeno(["plug", "tap://tap0", "vxvde://239.7.0.1"]);
      await b.waitForLink("tap0");
      await b.configure("tap0", "10.0.0.2/24");
      assert.ok(await a.pingable("10.0.0.2", 30_000)); // generous: a loaded machine starts plugs slowly

      const status = await a.run([...env, ...TWO_FLAGS, "status", "--json", "twoflags"]);
      assert.equal(status.code, 0, status.stderr);
      const report = JSON.parse(status.stdout);
      assert.ok(report.plugs[1].counters.framesIn > 0, status.stdout);
      // --metrics answers from a Worker too (the plug restarted itself able to start it).
      const metrics = await a.sh(["curl", "-s", "http://127.0.0.1:9464/metrics"]);
      assert.match(
        metrics,
        /^vdeno_received_frames_total\{name="twoflags",vnl="vxvde:\/\/239\.7\.0\.1"\} [1-9]/m,
      );
      const list = await a.run([...env, ...TWO_FLAGS, "status"]);
      assert.match(list.stdout, /\btwoflags\b.*tap:\/\/tap0 <-> vxvde:\/\/239\.7\.0\.1/);

      await run(["kill", "-TERM", String(report.pid)]);
      const sockets = () => [...Deno.readDirSync(`${runtime}/vdeno`)].map((entry) => entry.name);
      for (let i = 0; i < 50 && sockets().length > 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.deepEqual(sockets(), [], "the stopped daemon removed its control socket");

      // A namespace with loopback only: no Worker.
      const bare = await a.run([...env, ...TWO_FLAGS, "ns", "-", "sh", "-c", "ip -br link"]);
      assert.equal(bare.code, 0, bare.stderr);
      assert.match(bare.stdout, /^lo\s/);
      // With one network the cable runs on the main thread; with two (-m) each runs in a
      // Worker, which Deno loads only with read permission for vdeno's files: vdeno ns
      // restarts itself once with that alone.
      for (const vnls of [["vxvde://239.7.0.1"], ["-m", "vxvde://239.7.0.1", "null://"]]) {
        const inside = await a.run([
          ...env,
          ...TWO_FLAGS,
          "ns",
          ...vnls,
          "--",
          "sh",
          "-c",
          "ip addr add 10.0.0.3/24 dev vde0 && ip link set vde0 up && ping -c 1 -W 5 10.0.0.2",
        ]);
        assert.equal(inside.code, 0, `${vnls.join(" ")}: ${inside.stdout}${inside.stderr}`);
      }
    } finally {
      await Deno.remove(runtime, { recursive: true });
    }
  },
);

Deno.test("a permission Deno refuses is one line naming the flag, not a stack trace", async () => {
  // The demo runs ip(8) and needs root: more than the two flags allow.
  const result = await run([...TWO_FLAGS, "demo", "--no-vm"]);
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    /^vdeno demo: Needs --allow-\w+ to .+: run deno with --allow-\w+ \(or -A\)\n$/,
  );
  // Without --allow-ffi nothing of vdeno runs, and it says so in one line too.
  const none = await run([
    Deno.execPath(),
    "run",
    "--quiet",
    MAIN,
    "plug",
    "tap://tap0",
    "null://",
  ]);
  assert.equal(none.code, 1);
  assert.match(
    none.stderr,
    /^vdeno plug: Needs --allow-ffi to load \S+: run deno with --allow-ffi \(or -A\)\n$/,
  );
  // The same command with every permission gets past that point.
  const help = await run([...VDENO, "demo", "--help"]);
  assert.equal(help.code, 0);
});
