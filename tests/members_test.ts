/** Every member visible: vdeno ns plugs in `vdeno status`, and `vdeno status --cloud`. */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, VDENO } from "./_harness.ts";

const VNL = "vxvde://239.4.11.1";
const INSIDE = "ip link set vde0 address 02:00:00:00:00:02 && ip addr add 10.0.0.2/24 dev vde0" +
  " && ip link set vde0 up && echo ready && exec sleep 600";

async function statusJson(host: Host, ...args: string[]) {
  return JSON.parse(await host.sh([...VDENO, "status", "--json", ...args]));
}

function escaped(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

hostTest(
  "vdeno status lists a vdeno ns plug with its namespace's command and pid, counters and MAC table",
  ["ping", "unshare", "readlink"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    a.vdeno(["plug", "--name", `members-a-${Deno.pid}`, "tap://tap0", VNL]);
    await a.waitForLink("tap0");
    await a.configure("tap0", "10.0.0.1/24", "02:00:00:00:00:01");
    const ns = b.vdeno(["ns", VNL, "sh", "-c", INSIDE]);
    await ns.waitForOutput((text) => text.includes("ready"), 30_000);
    assert.ok(await a.pingable("10.0.0.2"));
    await a.sh(["ping", "-c", "5", "-i", "0.05", "10.0.0.2"]);

    const name = `ns-${ns.child.pid}-vde0`;
    const report = await statusJson(b, name);
    assert.equal(report.name, name);
    assert.equal(report.pid, ns.child.pid);
    assert.deepEqual(report.namespace.command, ["sh", "-c", INSIDE]);
    const namespaceOf = async (pid: number | string) =>
      (await b.sh(["readlink", `/proc/${pid}/ns/net`])).trim();
    assert.notEqual(
      await namespaceOf(report.namespace.pid),
      await namespaceOf("self"),
      "the namespace pid is a process inside the namespace vdeno ns made",
    );
    assert.deepEqual(
      report.plugs.map((plug: { vnl: string }) => plug.vnl),
      [VNL, "tap://vde0"],
    );
    const [vx, tap] = report.plugs;
    assert.ok(vx.counters.framesIn >= 5, JSON.stringify(vx.counters));
    assert.ok(tap.counters.framesIn >= 5, JSON.stringify(tap.counters));
    const learned = vx.learned.find((entry: { mac: string }) => entry.mac === "02:00:00:00:00:01");
    assert.match(learned?.peer ?? "", new RegExp(`^${escaped(a.address)}:\\d+$`));

    const list = await b.sh([...VDENO, "status"]);
    assert.match(
      list,
      new RegExp(
        `^${name}\\s+${ns.child.pid}\\s.*${escaped(VNL)} <-> tap://vde0\\s+\\(vdeno ns, ` +
          `namespace pid ${report.namespace.pid}: sh -c `,
        "m",
      ),
    );
    const detail = await b.sh([...VDENO, "status", name]);
    assert.match(detail, /^vdeno ns, namespace pid \d+: sh -c /m);
    assert.match(detail, new RegExp(`02:00:00:00:00:01\\s+${escaped(a.address)}:\\d+`));

    assert.equal((await ns.stop("SIGTERM")).code, 143);
    const after = await b.run([...VDENO, "status", name]);
    assert.notEqual(after.code, 0, "the plug's control socket went with it");
  },
);

hostTest(
  "vdeno status --cloud shows each member heard: underlay address, MACs, last heard, vdeno where known",
  ["ping", "unshare", "vde_plug"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const name = `cloud-a-${Deno.pid}`;
    a.vdeno(["plug", "--name", name, "tap://tap0", VNL]);
    // A second vdeno plug on host a: a member that is known to be vdeno.
    a.vdeno(["plug", "--name", `cloud-a2-${Deno.pid}`, "tap://tap1", VNL]);
    c.spawn(["vde_plug", "tap://tap0", VNL]);
    await a.waitForLink("tap0");
    await a.configure("tap0", "10.0.0.1/24", "02:00:00:00:00:01");
    await a.waitForLink("tap1");
    await a.configure("tap1", "10.0.1.11/24", "02:00:00:00:00:11");
    await c.waitForLink("tap0");
    await c.configure("tap0", "10.0.0.3/24", "02:00:00:00:00:03");
    const ns = b.vdeno(["ns", VNL, "sh", "-c", INSIDE]);
    await ns.waitForOutput((text) => text.includes("ready"), 30_000);
    assert.ok(await a.pingable("10.0.0.2"));
    assert.ok(await a.pingable("10.0.0.3"));
    // tap1's own broadcast (an ARP for nobody) reaches the first plug through the group.
    await a.run(["ping", "-c", "1", "-W", "1", "-I", "tap1", "10.0.1.99"]);

    const [cloud] = await statusJson(a, "--cloud", name);
    assert.equal(cloud.name, name);
    assert.equal(cloud.vnl, VNL);
    const member = (host: Host) =>
      cloud.members.find((m: { address: string }) => m.address.startsWith(`${host.address}:`));
    const ofB = member(b), ofC = member(c);
    assert.deepEqual(ofB?.macs, ["02:00:00:00:00:02"], JSON.stringify(cloud));
    assert.deepEqual(ofC?.macs, ["02:00:00:00:00:03"], JSON.stringify(cloud));
    assert.equal(ofB.vdeno, null, "nothing on an open network's wire tells vdeno from vde_plug");
    assert.equal(ofC.vdeno, null);
    assert.ok(ofB.ageSeconds < 30 && Date.parse(ofB.lastHeard) <= Date.now());
    const ofA2 = member(a);
    assert.deepEqual(ofA2?.macs, ["02:00:00:00:00:11"], JSON.stringify(cloud));
    assert.equal(ofA2.vdeno, true, "a plug on this host is known to be vdeno");

    const text = await a.sh([...VDENO, "status", "--cloud", name]);
    assert.match(text, new RegExp(`^${escaped(VNL)} as heard by ${name} .*: 3 members$`, "m"));
    assert.match(
      text,
      new RegExp(`${escaped(c.address)}:\\d+\\s+[\\d.]+s ago\\s+\\?\\s+02:00:00:00:00:03`),
    );
    assert.match(
      text,
      new RegExp(`${escaped(a.address)}:\\d+\\s+[\\d.]+s ago\\s+yes\\s+02:00:00:00:00:11`),
    );
  },
);
