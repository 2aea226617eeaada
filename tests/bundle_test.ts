/**
 * The single-file build: `deno task bundle` (tools/bundle.ts, around `deno
 * bundle`) makes one JavaScript file that runs the whole of vdeno, data plane
 * worker included, stamped with its commit (`deno compile`, which wraps the
 * same module graph in an executable, needs a runtime download that these
 * machines cannot make). `deno task install` puts it on PATH as `vdeno`.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, run, VDENO } from "./_harness.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BUNDLE_TS = `${ROOT}tools/bundle.ts`;
const INSTALL_TS = `${ROOT}tools/install.ts`;

hostTest(
  "the bundled single file plugs a cloud that pings, and answers status",
  ["vde_plug"],
  async () => {
    const directory = await Deno.makeTempDir();
    const bundle = `${directory}/vdeno.js`;
    try {
      const built = await run([Deno.execPath(), "run", "-A", BUNDLE_TS, "--output", bundle], {
        timeoutMs: 300_000,
      });
      assert.equal(built.code, 0, built.stderr);
      assert.match(await Deno.readTextFile(bundle), /^#!\/usr\/bin\/env -S deno run/);
      const single = [Deno.execPath(), "run", "--allow-all", "--quiet", bundle];
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      a.spawn([...single, "plug", "--name", "single", "tap://tap0", "vxvde://239.6.0.1"]);
      b.spawn(["vde_plug", "tap://tap0", "vxvde://239.6.0.1"]);
      for (const [i, host] of [a, b].entries()) {
        await host.waitForLink("tap0");
        await host.configure("tap0", `10.0.0.${i + 1}/24`);
      }
      assert.ok(await a.pingable("10.0.0.2"));
      const status = JSON.parse(await a.sh([...single, "status", "--json", "single"]));
      assert.ok(status.plugs[1].counters.framesIn > 0);
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);

Deno.test("deno task install puts a vdeno on PATH that says its commit anywhere; uninstall removes it", async () => {
  const prefix = await Deno.makeTempDir({ prefix: "vdeno-install-" });
  // Another directory than the checkout: the installed vdeno needs nothing from it.
  const elsewhere = await Deno.makeTempDir({ prefix: "vdeno-elsewhere-" });
  try {
    // The commit git names for this checkout; "unknown" outside a git checkout, as vdeno says.
    const described = await run([
      "git",
      "-C",
      ROOT,
      "describe",
      "--always",
      "--dirty",
      "--abbrev=12",
    ])
      .catch(() => ({ code: 127, stdout: "" }));
    const commit = described.code === 0 ? described.stdout.trim() : "unknown";

    const installed = await run([Deno.execPath(), "run", "-A", INSTALL_TS, "--prefix", prefix], {
      timeoutMs: 300_000,
    });
    assert.equal(installed.code, 0, installed.stderr);
    assert.match(installed.stdout, new RegExp(`^Installed ${prefix}/bin/vdeno$`, "m"));
    const vdeno = `${prefix}/bin/vdeno`;
    assert.equal((await Deno.stat(vdeno)).mode! & 0o777, 0o755);

    const env = { PATH: `${prefix}/bin:${Deno.env.get("PATH")}` };
    const inside = (argv: string[]) =>
      new Deno.Command(argv[0], { args: argv.slice(1), cwd: elsewhere, env, stdin: "null" })
        .output();
    const version = await inside(["vdeno", "--version"]);
    const text = new TextDecoder().decode(version.stdout);
    assert.equal(version.code, 0, new TextDecoder().decode(version.stderr));
    assert.equal(
      text,
      `vdeno ${
        (await import("../deno.json", { with: { type: "json" } })).default.version
      } (commit ${commit}, deno ${Deno.version.deno})\n`,
    );
    const mac = await inside(["vdeno", "randmac"]);
    assert.match(new TextDecoder().decode(mac.stdout), /^[0-9a-f]{2}(:[0-9a-f]{2}){5}\n$/);
    // From the checkout, git says the same commit.
    const fromCheckout = await run([...VDENO, "version"]);
    assert.match(fromCheckout.stdout, new RegExp(`\\(commit ${commit}, deno `));

    const removed = await run([
      Deno.execPath(),
      "run",
      "-A",
      INSTALL_TS,
      "--uninstall",
      "--prefix",
      prefix,
    ]);
    assert.equal(removed.code, 0, removed.stderr);
    await assert.rejects(Deno.stat(vdeno), Deno.errors.NotFound);
  } finally {
    await Deno.remove(prefix, { recursive: true });
    await Deno.remove(elsewhere, { recursive: true });
  }
});
