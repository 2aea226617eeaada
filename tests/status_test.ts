/** Seeing inside a running plug: vdeno status, the control socket, pcap capture. */

import assert from "node:assert/strict";
import { controlDirectory } from "../app/control.ts";
import { hostTest, Lan, run, sleep, VDENO } from "./_harness.ts";

async function twoPlugs(lan: Lan, extra: string[] = []) {
  const [a, b] = lan.hosts;
  const left = a.vdeno(["plug", "--name", "left", ...extra, "tap://tap0", "vxvde://239.4.0.1"]);
  b.vdeno(["plug", "--name", "right", "tap://tap0", "vxvde://239.4.0.1"]);
  for (const [i, host] of [a, b].entries()) {
    await host.waitForLink("tap0");
    await host.configure("tap0", `10.0.0.${i + 1}/24`, `02:00:00:00:00:0${i + 1}`);
  }
  assert.ok(await a.pingable("10.0.0.2"));
  return { a, b, left };
}

hostTest("status --json shows counters moving and the peer's MAC learned from its address", [
  "ping",
], async () => {
  await using lan = await Lan.create(2);
  const { a, b } = await twoPlugs(lan);
  const status = async () => JSON.parse(await a.sh([...VDENO, "status", "--json", "left"]));
  const before = await status();
  await a.sh(["ping", "-c", "10", "-i", "0.05", "10.0.0.2"]);
  const after = await status();
  assert.equal(after.name, "left");
  assert.deepEqual(after.plugs.map((plug: { vnl: string }) => plug.vnl), [
    "tap://tap0",
    "vxvde://239.4.0.1",
  ]);
  const [tapBefore, vxBefore] = before.plugs, [tap, vx] = after.plugs;
  assert.ok(
    tap.counters.framesIn - tapBefore.counters.framesIn >= 10,
    "echo requests entered from the TAP",
  );
  assert.ok(
    vx.counters.framesIn - vxBefore.counters.framesIn >= 10,
    "echo replies arrived from the cloud",
  );
  assert.ok(
    vx.counters.sentUnicast - vxBefore.counters.sentUnicast >= 10,
    "sent by unicast once learned",
  );
  const learned = vx.learned.find((entry: { mac: string }) => entry.mac === "02:00:00:00:00:02");
  assert.ok(learned, JSON.stringify(vx.learned));
  assert.match(learned.peer, new RegExp(`^${b.address.replaceAll(".", "\\.")}:\\d+$`));
  assert.deepEqual(vx.peers, [learned.peer]);

  const table = await a.sh([...VDENO, "status"]);
  assert.match(table, /^NAME\s+PID\s+UPTIME/);
  assert.match(table, /\bleft\b.*tap:\/\/tap0 <-> vxvde:\/\/239\.4\.0\.1/);
  const detail = await a.sh([...VDENO, "status", "left"]);
  assert.match(detail, new RegExp(`02:00:00:00:00:02\\s+${b.address.replaceAll(".", "\\.")}:\\d+`));
  assert.match(detail, /sentUnicast=\d+/);
});

hostTest("status --watch prints rates per second", ["ping"], async () => {
  await using lan = await Lan.create(2);
  const { a } = await twoPlugs(lan);
  const watch = a.vdeno(["status", "--watch", "0.3", "left"]);
  const pings = a.run(["ping", "-c", "15", "-i", "0.05", "10.0.0.2"]);
  await watch.waitForOutput(
    (text) => /FRAMES\/S IN[\s\S]*left\s+vxvde:\/\/239\.4\.0\.1\s+[1-9]\d*/.test(text),
    10_000,
  );
  await pings;
  assert.equal((await watch.stop("SIGINT")).code, 0);
});

hostTest(
  "the control socket is mode 0600 and another user cannot query it",
  ["setpriv"],
  async () => {
    await using lan = await Lan.create(2);
    const { a } = await twoPlugs(lan);
    const socket = `${controlDirectory()}/left.sock`;
    assert.equal((Deno.statSync(socket).mode ?? 0) & 0o777, 0o600);
    const asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    const probe = await a.run([
      ...asNobody,
      "sh",
      "-c",
      `exec 3<>/dev/null; cat ${socket} 2>&1; ls ${socket} 2>&1; echo done`,
    ]);
    assert.match(probe.stdout, /Permission denied/);
    const connect = await run([
      ...asNobody,
      "env",
      `XDG_RUNTIME_DIR=${socket.replace(/\/vdeno\/left\.sock$/, "")}`,
      ...VDENO,
      "status",
      "left",
    ]);
    assert.notEqual(connect.code, 0, "another user gets no status");
  },
);

hostTest("--capture writes a pcap that tcpdump reads, with the echo requests and replies", [
  "tcpdump",
  "ping",
], async () => {
  const file = await Deno.makeTempFile({ suffix: ".pcap" });
  try {
    await using lan = await Lan.create(2);
    const { a, left } = await twoPlugs(lan, ["--capture", file]);
    await a.sh(["ping", "-c", "4", "-i", "0.1", "10.0.0.2"]);
    await sleep(200);
    assert.equal((await left.stop("SIGTERM")).code, 0);
    const text = await run(["tcpdump", "-r", file, "-nn", "icmp"]);
    assert.equal(text.code, 0, text.stderr);
    const requests = text.stdout.split("\n").filter((line) =>
      /10\.0\.0\.1 > 10\.0\.0\.2: ICMP echo request/.test(line)
    );
    const replies = text.stdout.split("\n").filter((line) =>
      /10\.0\.0\.2 > 10\.0\.0\.1: ICMP echo reply/.test(line)
    );
    assert.ok(requests.length >= 4, text.stdout);
    assert.ok(replies.length >= 4, text.stdout);
  } finally {
    await Deno.remove(file);
  }
});

hostTest(
  "pcap://FILE as a cable end records what the cloud carries",
  ["tcpdump", "ping"],
  async () => {
    const file = await Deno.makeTempFile({ suffix: ".pcap" });
    try {
      await using lan = await Lan.create(3);
      const { a } = await twoPlugs(lan);
      const recorder = lan.hosts[2].vdeno([
        "plug",
        "--name",
        "recorder",
        "vxvde://239.4.0.1",
        `pcap://${file}`,
      ]);
      await recorder.waitForOutput(() => {
        try {
          return Deno.statSync(file).size >= 24;
        } catch {
          return false;
        }
      });
      await sleep(300);
      // Nobody owns 10.0.0.250: its ARP requests are broadcast to the whole cloud.
      await a.run(["ping", "-c", "1", "-W", "1", "10.0.0.250"]);
      assert.equal((await recorder.stop("SIGTERM")).code, 0);
      const text = await run(["tcpdump", "-r", file, "-nn", "-e"]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(
        text.stdout, // -e prints the Ethernet header: the broadcast destination.
        /ff:ff:ff:ff:ff:ff.*Request who-has 10\.0\.0\.250 tell 10\.0\.0\.1/,
        "the broadcast ARP for an unknown host",
      );
    } finally {
      await Deno.remove(file);
    }
  },
);
