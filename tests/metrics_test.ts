/** Operating vdeno: --metrics for Prometheus, sd_notify readiness, logs. */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, sleep, VDENO } from "./_harness.ts";
import { parseMetricsAddress, renderMetrics } from "../app/metrics.ts";
import { Counter, COUNTER_NAMES, newCounters } from "../core/counters.ts";

/** Samples of a Prometheus text exposition, by `metric{labels}`. */
type Samples = Map<string, number>;

function parseExposition(text: string): { samples: Samples; types: Map<string, string> } {
  const samples: Samples = new Map(), types = new Map<string, string>();
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1], type[2]);
    if (line === "" || line.startsWith("#")) continue;
    const sample = /^(\S+?(?:\{.*\})?) (\S+)$/.exec(line);
    assert.ok(sample, `a sample line: ${line}`);
    samples.set(sample[1], Number(sample[2]));
  }
  return { samples, types };
}

/** Scrapes `url` from inside `host` with curl, retrying while the server starts. */
async function scrape(host: Host, url: string) {
  for (let attempt = 0;; attempt++) {
    const result = await host.run(["curl", "-sSfg", "--max-time", "5", url]);
    if (result.code === 0) return parseExposition(result.stdout);
    if (attempt === 50) throw new Error(`curl ${url}: ${result.stderr}`);
    await sleep(200);
  }
}

hostTest(
  "--metrics serves every counter of vdeno plug and vdeno ns to a scrape, moving with traffic",
  ["curl", "ping", "unshare"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    const vnl = "vxvde://239.4.9.1";
    const name = `metrics-${Deno.pid}`;
    a.vdeno(["plug", "--name", name, "--metrics", `${a.address}:9578`, "tap://tap0", vnl]);
    await a.waitForLink("tap0");
    await a.configure("tap0", "10.0.0.1/24", "02:00:00:00:00:01");
    const inside =
      "ip link set vde0 address 02:00:00:00:00:02 && ip addr add 10.0.0.2/24 dev vde0" +
      " && ip link set vde0 up && echo ready && exec sleep 600";
    const ns = b.vdeno(["ns", "--metrics", `[${b.address6}]:9578`, vnl, "sh", "-c", inside]);
    await ns.waitForOutput((text) => text.includes("ready"), 30_000);
    assert.ok(await a.pingable("10.0.0.2"));

    const plugUrl = `http://${a.address}:9578/metrics`;
    const nsUrl = `http://[${b.address6}]:9578/metrics`;
    const plugVx = `{name="${name}",vnl="${vnl}"}`;
    const nsVx = `{name="ns-${ns.child.pid}-vde0",vnl="${vnl}"}`;
    const first = await scrape(a, plugUrl);
    assert.equal(first.types.get("vdeno_sent_unicast_frames_total"), "counter");
    assert.equal(first.types.get("vdeno_received_bytes_total"), "counter");
    assert.equal(first.types.get("process_resident_memory_bytes"), "gauge");
    assert.ok(first.samples.get("process_resident_memory_bytes")! > 10e6, "the plug's own memory");
    for (const metric of ["vdeno_received_frames_total", "vdeno_sent_frames_total"]) {
      assert.ok(first.samples.has(`${metric}{name="${name}",vnl="tap://tap0"}`), metric);
      assert.ok(first.samples.has(`${metric}${plugVx}`), metric);
    }
    assert.ok(
      first.samples.has(
        `vdeno_dropped_frames_total{name="${name}",vnl="${vnl}",reason="own_echo"}`,
      ),
      "drops carry their reason as a label",
    );

    // Scrapes during traffic: the numbers move between two of them.
    const pings = a.run(["ping", "-c", "150", "-i", "0.02", "10.0.0.2"]);
    await sleep(500);
    const during1 = await scrape(a, plugUrl), nsDuring1 = await scrape(b, nsUrl);
    await sleep(800);
    const during2 = await scrape(a, plugUrl), nsDuring2 = await scrape(b, nsUrl);
    const moved = (before: Samples, after: Samples, key: string) =>
      after.get(key)! - before.get(key)!;
    assert.ok(
      moved(during1.samples, during2.samples, `vdeno_sent_unicast_frames_total${plugVx}`) > 10,
    );
    assert.ok(moved(during1.samples, during2.samples, `vdeno_received_frames_total${plugVx}`) > 10);
    assert.ok(
      moved(nsDuring1.samples, nsDuring2.samples, `vdeno_received_frames_total${nsVx}`) > 10,
    );
    assert.ok(
      moved(nsDuring1.samples, nsDuring2.samples, `vdeno_sent_unicast_frames_total${nsVx}`) > 10,
    );
    assert.equal((await pings).code, 0);

    const last = await scrape(a, plugUrl);
    assert.ok(
      moved(first.samples, last.samples, `vdeno_received_frames_total${plugVx}`) >= 150,
      "every echo reply counted",
    );
    assert.ok(moved(first.samples, last.samples, `vdeno_sent_bytes_total${plugVx}`) >= 150 * 98);
  },
);

hostTest("--metrics with a bad address says so in one line and exits non-zero", [], async () => {
  await using lan = await Lan.create(1);
  const [a] = lan.hosts;
  const plug = (address: string) =>
    a.run([...VDENO, "plug", "--metrics", address, "vxvde://239.4.9.2", "vxvde://239.4.9.3"]);
  const bad = await plug("nowhere");
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^vdeno plug: Bad --metrics address: "nowhere"; expected ADDR:PORT/);
  assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
  // An address of the LAN that no interface of this host has: the listen fails, and says where.
  const absent = await plug(`${a.address.replace(/\d+$/, "250")}:9578`);
  assert.equal(absent.code, 1);
  assert.match(absent.stderr, /^vdeno plug: Cannot serve metrics on [\d.]+:9578: /);
  assert.equal(absent.stderr.trim().split("\n").length, 1, absent.stderr);
});

hostTest("--log-level info states starts and stops; debug each member learned and forgotten", [
  "ping",
], async () => {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const vnl = "vxvde://239.4.9.7";
  const debug = a.vdeno(["plug", "--log-level", "debug", "tap://tap0", vnl]);
  const info = b.vdeno(["plug", "--log-level", "info", "tap://tap0", vnl]);
  for (const [i, host] of [a, b].entries()) {
    await host.waitForLink("tap0");
    await host.configure("tap0", `10.0.0.${i + 1}/24`, `02:00:00:00:00:0${i + 1}`);
  }
  assert.ok(await a.pingable("10.0.0.2"));
  const at = (host: Host) => `${host.address.replaceAll(".", "\\.")}:\\d+`;
  assert.equal((await info.stop("SIGTERM")).code, 0);
  await debug.waitForOutput(() => /it said goodbye/.test(debug.stderr));
  assert.match(
    debug.stderr,
    /Z vdeno info: plug started: tap:\/\/tap0 <-> vxvde:\/\/239\.4\.9\.7\n/,
  );
  assert.match(
    debug.stderr,
    new RegExp(`Z vdeno debug: ${vnl}: learned 02:00:00:00:00:02 at ${at(b)}\\n`),
  );
  assert.match(
    debug.stderr,
    new RegExp(`Z vdeno debug: ${vnl}: forgot 1 MAC at ${at(b)}: it said goodbye\\n`),
  );
  assert.match(info.stderr, /Z vdeno info: plug started: /);
  assert.match(info.stderr, /Z vdeno info: plug stopped: on a signal\n/);
  assert.doesNotMatch(info.stderr, /debug/, "no debug lines at info");
});

Deno.test("the exposition: HELP and TYPE before each family, labels escaped, every counter once per plug", () => {
  const counters = newCounters();
  counters[Counter.framesIn] = 7;
  counters[Counter.dropAuthFailed] = 3;
  const text = renderMetrics([{ name: "left", vnl: 'stream://a"b\\c\nd', counters }], 0);
  const { samples, types } = parseExposition(text);
  const vnl = 'vnl="stream://a\\"b\\\\c\\nd"';
  assert.equal(samples.get(`vdeno_received_frames_total{name="left",${vnl}}`), 7);
  assert.equal(
    samples.get(`vdeno_dropped_frames_total{name="left",${vnl},reason="auth_failed"}`),
    3,
  );
  const drops = [...samples.keys()].filter((key) => key.startsWith("vdeno_dropped_frames_total"));
  assert.equal(drops.length, COUNTER_NAMES.filter((name) => name.startsWith("drop")).length);
  for (const key of samples.keys()) {
    const metric = key.replace(/\{.*$/, "");
    assert.ok(types.has(metric), `a TYPE line for ${metric}`);
    if (types.get(metric) === "counter") assert.match(metric, /_total$/);
  }
  const lines = text.split("\n");
  for (const [metric] of types) {
    const help = lines.findIndex((line) => line.startsWith(`# HELP ${metric} `));
    const first = lines.findIndex((line) => line.startsWith(metric));
    assert.ok(help >= 0 && help < first, `# HELP before the samples of ${metric}`);
  }
});

Deno.test("--metrics addresses: ADDR:PORT and [IPv6]:PORT, anything else one clear error", () => {
  assert.deepEqual(parseMetricsAddress("127.0.0.1:9578"), { hostname: "127.0.0.1", port: 9578 });
  assert.deepEqual(parseMetricsAddress("[::1]:9578"), { hostname: "::1", port: 9578 });
  assert.deepEqual(parseMetricsAddress("localhost:80"), { hostname: "localhost", port: 80 });
  for (const bad of ["9578", "::1:9578", "host:0", "host:65536", "host:", "[::1]"]) {
    assert.throws(() => parseMetricsAddress(bad), /^Error: Bad --metrics address: .*ADDR:PORT/);
  }
});
