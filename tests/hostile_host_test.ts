/**
 * Attacks from the host: another local user, a planted symbolic link, a fake
 * or dead plug in the control directory. Each test performs the attack with
 * real processes and a real second user, and shows it now does no harm.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, run, sleep, VDENO, waitUntil } from "./_harness.ts";

/** The unprivileged user that plays the attacker. */
const NOBODY = 65534;

/** A uid no account uses, unique to this test process: the victim, an ordinary user. */
const VICTIM = 20000 + (Deno.pid % 30000);

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A home and Deno cache that `uid` owns, so that vdeno runs as that user;
 * removed on dispose.
 */
async function userHome(uid: number) {
  const home = await Deno.makeTempDir({ prefix: "vdeno-home-" });
  await Deno.chown(home, uid, uid);
  return {
    /** argv that runs `argv` as `uid`, with `env` and XDG_RUNTIME_DIR unset (as under sudo). */
    as: (argv: string[], env: string[] = []) => [
      "setpriv",
      `--reuid=${uid}`,
      `--regid=${uid}`,
      "--clear-groups",
      "env",
      "-u",
      "XDG_RUNTIME_DIR",
      `HOME=${home}`,
      `DENO_DIR=${home}/deno`,
      ...env,
      ...argv,
    ],
    [Symbol.asyncDispose]: () => Deno.remove(home, { recursive: true }),
  };
}

/** A private runtime directory (0700), to give a test's plugs a control directory of their own. */
async function privateRuntime() {
  const path = await Deno.makeTempDir({ prefix: "vdeno-run-" });
  await Deno.chmod(path, 0o700);
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

hostTest(
  "a control directory another user made in /tmp is refused with one line",
  ["setpriv"],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    await using victim = await userHome(VICTIM);
    await using attacker = await userHome(NOBODY);
    const directory = `/tmp/vdeno-${VICTIM}`;
    const bait = `/tmp/vdeno-bait-${Deno.pid}`;
    const clean = () => run(["rm", "-rf", directory, bait]);
    await clean();
    const plug = (name: string) =>
      host.run(victim.as([...VDENO, "plug", "-n", name, "vxvde://239.8.0.1", "=", "cat"]), {
        timeoutMs: 60_000,
      });
    const attacks: [string, string[], RegExp][] = [
      [
        "a directory of the attacker's, open to all",
        ["sh", "-c", `mkdir -m 0777 ${directory}`],
        /belongs to uid 65534, not to uid \d+/,
      ],
      [
        "a symbolic link to the attacker's directory",
        ["sh", "-c", `mkdir -m 0777 ${bait} && ln -s ${bait} ${directory}`],
        /is a symbolic link/,
      ],
      ["a file", ["sh", "-c", `touch ${directory}`], /is not a directory/],
    ];
    try {
      for (const [what, plant, reason] of attacks) {
        await clean();
        const planted = await run(attacker.as(plant));
        assert.equal(planted.code, 0, planted.stderr);
        const result = await plug("victim");
        assert.equal(result.code, 1, `${what}: the plug must refuse it: ${result.stderr}`);
        const lines = result.stderr.trim().split("\n");
        assert.equal(lines.length, 1, `${what}: one line: ${result.stderr}`);
        assert.match(lines[0], new RegExp(`Unsafe control directory ${directory}: it`));
        assert.match(lines[0], reason, what);
        assert.ok(!exists(`${bait}/victim.sock`), `${what}: no socket in the attacker's directory`);
      }
      // The victim's own directory, left group- and world-readable by something else.
      await clean();
      await Deno.mkdir(directory);
      await Deno.chmod(directory, 0o755);
      await Deno.chown(directory, VICTIM, VICTIM);
      const loose = await plug("victim");
      assert.equal(loose.code, 1);
      assert.match(loose.stderr, /it has mode 0755, not 0700/);

      // With nothing planted, the plug makes the directory itself: 0700, its own, socket 0600.
      await clean();
      const good = host.spawn(victim.as([...VDENO, "plug", "-n", "victim", "vxvde://239.8.0.1"]), {
        stdin: "piped",
      });
      await waitUntil("the victim's control socket", () => exists(`${directory}/victim.sock`));
      const info = Deno.lstatSync(directory);
      assert.ok(info.isDirectory);
      assert.equal(info.uid, VICTIM);
      assert.equal((info.mode ?? 0) & 0o7777, 0o700);
      const socket = Deno.lstatSync(`${directory}/victim.sock`);
      assert.ok(socket.isSocket);
      assert.equal((socket.mode ?? 0) & 0o777, 0o600);
      const status = await run(victim.as([...VDENO, "status", "--json", "victim"]));
      assert.equal(status.code, 0, status.stderr);
      assert.equal(JSON.parse(status.stdout).name, "victim");
      await good.stop("SIGTERM");
    } finally {
      await clean();
    }
  },
);

hostTest("root's control directory is /run/vdeno when XDG_RUNTIME_DIR is unset", [], async () => {
  await using lan = await Lan.create(1);
  const [host] = lan.hosts;
  const name = `rootdir-${Deno.pid}`;
  const unset = ["env", "-u", "XDG_RUNTIME_DIR"];
  const plug = host.spawn([...unset, ...VDENO, "plug", "-n", name, "vxvde://239.8.0.2"], {
    stdin: "piped",
  });
  await waitUntil("the control socket", () => exists(`/run/vdeno/${name}.sock`));
  const info = Deno.lstatSync("/run/vdeno");
  assert.equal(info.uid, 0);
  assert.equal((info.mode ?? 0) & 0o7777, 0o700);
  const status = await run([...unset, ...VDENO, "status", "--json", name]);
  assert.equal(status.code, 0, status.stderr);
  assert.equal(JSON.parse(status.stdout).name, name);
  assert.equal((await plug.stop("SIGTERM")).code, 0);
  assert.ok(!exists(`/run/vdeno/${name}.sock`), "the socket is removed on exit");
});

hostTest(
  "status strips control characters, never hangs on a fake plug, and removes dead sockets",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    await using runtime = await privateRuntime();
    const env = { XDG_RUNTIME_DIR: runtime.path };
    const plug = (name: string) =>
      host.spawn([...VDENO, "plug", "-n", name, "vxvde://239.8.0.3"], { env, stdin: "piped" });
    plug("real");
    const doomed = plug("doomed");
    const directory = `${runtime.path}/vdeno`;
    await waitUntil("the plugs' sockets", () => exists(`${directory}/real.sock`));
    await waitUntil("the plugs' sockets", () => exists(`${directory}/doomed.sock`));
    // A plug killed outright leaves its socket behind.
    await doomed.stop("SIGKILL");
    assert.ok(exists(`${directory}/doomed.sock`));

    // Fake plugs, as anyone who could write there would plant them.
    const escapes = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202e";
    const evil = Deno.listen({ transport: "unix", path: `${directory}/evil.sock` });
    const silent = Deno.listen({ transport: "unix", path: `${directory}/silent.sock` });
    const flood = Deno.listen({ transport: "unix", path: `${directory}/flood.sock` });
    Deno.writeTextFileSync(`${directory}/notasocket.sock`, "");
    const held: Deno.Conn[] = [];
    const serve = async (listener: Deno.Listener, answer: (conn: Deno.Conn) => Promise<void>) => {
      for await (const conn of listener) {
        held.push(conn);
        answer(conn).catch(() => {});
      }
    };
    const report = JSON.stringify({
      name: `evil${escapes}`,
      pid: 1,
      startedAt: escapes,
      uptimeSeconds: 1,
      plugs: [{ vnl: `vxvde://${escapes}`, counters: { framesIn: 1 }, [escapes]: escapes }],
    });
    const servers = [
      serve(evil, async (conn) => {
        await conn.write(new TextEncoder().encode(report));
        conn.close();
      }),
      serve(silent, async () => {}),
      serve(flood, async (conn) => {
        const chunk = new Uint8Array(1 << 20).fill(0x20);
        for (;;) await conn.write(chunk);
      }),
    ];
    try {
      for (const args of [["status"], ["status", "--json"], ["status", "1"]]) {
        const result = await run([...VDENO, ...args], { env, timeoutMs: 60_000 });
        assert.equal(result.code, 0, `${args.join(" ")}: ${result.stderr}`);
        const printed = result.stdout + result.stderr;
        // deno-lint-ignore no-control-regex
        const control = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/.exec(printed);
        assert.equal(control, null, `${args.join(" ")} printed a control character: ${printed}`);
        assert.match(printed, /evil/);
        if (args.length === 1) {
          assert.match(result.stdout, /\breal\b/);
          assert.match(result.stderr, /silent gave no report: no answer within 2 s/);
          assert.match(result.stderr, /flood gave no report: answer longer than \d+ bytes/);
        }
      }
      assert.ok(!exists(`${directory}/doomed.sock`), "the dead plug's socket was removed");
      assert.ok(exists(`${directory}/real.sock`), "a live plug's socket stays");
      assert.ok(exists(`${directory}/notasocket.sock`), "what is not a socket is left alone");
    } finally {
      for (const listener of [evil, silent, flood]) listener.close();
      for (const conn of held) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
      await Promise.allSettled(servers);
    }
  },
);

/** A world-writable sticky directory, as /tmp is, that the test owns and removes. */
async function stickyDirectory() {
  const path = await Deno.makeTempDir({ prefix: "vdeno-sticky-" });
  await Deno.chmod(path, 0o1777);
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

hostTest(
  "a symbolic link planted at the pidfile or a capture path does not make root write through it",
  ["setpriv", "tcpdump"],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    await using attacker = await userHome(NOBODY);
    await using tmp = await stickyDirectory();
    await using secrets = await privateRuntime();
    const secret = `${secrets.path}/shadow`;
    Deno.writeTextFileSync(secret, "root's secret\n", { mode: 0o600 });
    const paths = {
      pidfile: `${tmp.path}/plug.pid`,
      capture: `${tmp.path}/capture.pcap`,
      pcap: `${tmp.path}/end.pcap`,
    };
    const plug = (name: string) =>
      host.run([
        ...VDENO,
        "plug",
        "-n",
        name,
        "-p",
        paths.pidfile,
        "--capture",
        paths.capture,
        "vxvde://239.8.0.4",
        `pcap://${paths.pcap}`,
      ], { timeoutMs: 30_000 });
    for (const [what, path] of Object.entries(paths)) {
      await run(["rm", "-f", ...Object.values(paths)]);
      const planted = await run(attacker.as(["ln", "-sf", secret, path]));
      assert.equal(planted.code, 0, planted.stderr);
      const result = await plug(`symlink-${what}-${Deno.pid}`);
      assert.equal(result.code, 1, `${what}: ${result.stdout}${result.stderr}`);
      assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
      assert.match(result.stderr, new RegExp(`${path} is a symbolic link`));
      assert.equal(
        Deno.readTextFileSync(secret),
        "root's secret\n",
        `${what}: the target is intact`,
      );
    }
    await run(["rm", "-f", ...Object.values(paths)]);

    // Files the attacker made beforehand, open to all, each with a hard link the attacker keeps:
    // the plug replaces them with files of its own and writes nothing into the attacker's.
    for (const path of Object.values(paths)) {
      const planted = await run(
        attacker.as(["sh", "-c", `: > ${path} && chmod 0666 ${path} && ln ${path} ${path}.kept`]),
      );
      assert.equal(planted.code, 0, planted.stderr);
    }
    const recorder = host.spawn([
      ...VDENO,
      "plug",
      "-n",
      `files-${Deno.pid}`,
      "-p",
      paths.pidfile,
      "--capture",
      paths.capture,
      "vxvde://239.8.0.4",
      `pcap://${paths.pcap}`,
    ]);
    await waitUntil("the pidfile", () => {
      try {
        return Deno.readTextFileSync(paths.pidfile).trim() !== "";
      } catch {
        return false;
      }
    });
    // A frame for the pcap end and the capture: an ARP broadcast from a second plug on the group.
    const sender = host.spawn([...VDENO, "plug", "tap://tapx", "vxvde://239.8.0.4"]);
    await host.waitForLink("tapx", 30_000, sender);
    await host.configure("tapx", "10.9.0.1/24");
    await host.run(["ping", "-c", "2", "-W", "1", "10.9.0.2"]);
    for (const path of Object.values(paths)) {
      const info = Deno.lstatSync(path);
      assert.ok(info.isFile, path);
      assert.equal(info.uid, 0, `${path} is root's own file now`);
      assert.equal((info.mode ?? 0) & 0o777, 0o600, `${path} is mode 0600`);
      assert.equal(
        Deno.statSync(`${path}.kept`).size,
        0,
        `nothing went into the attacker's ${path}`,
      );
      const read = await run(attacker.as(["cat", path]));
      assert.notEqual(read.code, 0, `the attacker cannot read ${path}`);
    }
    assert.equal((await recorder.stop("SIGTERM")).code, 0);
    for (const path of [paths.capture, paths.pcap]) {
      const text = await run(["tcpdump", "-r", path, "-nn"]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /ARP, Request who-has 10\.9\.0\.2/, path);
    }
    assert.ok(!exists(paths.pidfile), "the pidfile is removed on exit");
  },
);

hostTest(
  "a stream reader that stops reading costs counted drops, never the plug: status answers and SIGTERM ends it",
  ["mkfifo"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await using runtime = await privateRuntime();
    const env = { XDG_RUNTIME_DIR: runtime.path };
    // The broadcaster: frames written to a plug's stdin go to the cloud.
    const broadcaster = b.spawn([...VDENO, "plug", "vxvde://239.8.0.5"], { stdin: "piped" });
    const feed = broadcaster.child.stdin.getWriter();
    const FRAMES = 300;
    const broadcast = async () => {
      const frame = new Uint8Array(2 + 1400);
      frame.set([1400 >> 8, 1400 & 0xff], 0);
      frame.fill(0xff, 2, 8);
      frame.set([0x02, 0, 0, 0, 0, 9, 0x88, 0xb5], 8);
      const stream = new Uint8Array(frame.length * FRAMES);
      for (let i = 0; i < FRAMES; i++) stream.set(frame, i * frame.length);
      await feed.write(stream);
    };
    const fifo = `${runtime.path}/stdout.fifo`;
    await run(["mkfifo", fifo]);
    const cases: [string, () => unknown][] = [
      // `= COMMAND` whose command never reads its stdin.
      [
        "command",
        () =>
          a.spawn([...VDENO, "plug", "-n", "command", "vxvde://239.8.0.5", "=", "sleep", "600"], {
            env,
          }),
      ],
      // stdout to a reader that never reads, as a stuck dpipe.
      ["stdout", () => {
        a.spawn(["sh", "-c", `exec sleep 600 < ${fifo}`]);
        return a.spawn(
          ["sh", "-c", `exec ${VDENO.join(" ")} plug -n stdout vxvde://239.8.0.5 > ${fifo}`],
          { env, stdin: "piped" },
        );
      }],
    ];
    for (const [name, start] of cases) {
      const plug = start() as Awaited<ReturnType<typeof a.spawn>>;
      await waitUntil(
        `${name}'s control socket`,
        () => exists(`${runtime.path}/vdeno/${name}.sock`),
      );
      // 420 KB of broadcasts: more than six times what a pipe holds.
      await broadcast();
      const counters = async () => {
        const result = await run([...VDENO, "status", "--json", name], { env, timeoutMs: 20_000 });
        assert.equal(result.code, 0, `${name}: status answers: ${result.stderr}`);
        return JSON.parse(result.stdout).plugs[0].counters.framesIn;
      };
      const deadline = Date.now() + 20_000;
      while ((await counters()) < FRAMES && Date.now() < deadline) await sleep(200);
      const status = await run([...VDENO, "status", "--json", name], { env, timeoutMs: 20_000 });
      assert.equal(status.code, 0, `${name}: status answers: ${status.stderr}`);
      const [network, stream] = JSON.parse(status.stdout).plugs;
      assert.ok(network.counters.framesIn >= FRAMES, JSON.stringify(network.counters));
      assert.ok(stream.counters.framesOut > 0, "the pipe took what fitted");
      assert.ok(stream.counters.dropQueueFull > 0, "what did not fit was dropped and counted");
      assert.equal(
        stream.counters.framesOut + stream.counters.dropQueueFull,
        network.counters.framesIn,
        `${name}: every frame went out or was counted as dropped`,
      );
      const stopped = await plug.stop("SIGTERM");
      assert.equal(
        stopped.signal,
        null,
        `${name}: SIGTERM ended the plug (not the SIGKILL after 10 s)`,
      );
      assert.equal(stopped.code, 0, `${name}: ${plug.stderr}`);
    }
    await feed.close();
  },
);

/** Sends COUNT frames of EtherType 0x88b5, one per datagram, from FROM (ADDRESS:PORT) to TO. */
const INJECT = `
import { bindSocket, SocketAddress, sendTo, udpSocket } from "${new URL(
  "../ffi/net.ts",
  import.meta.url,
)}";
const [from, to, count] = Deno.args;
const parse = (text) => SocketAddress.parse(text.slice(0, text.lastIndexOf(":")), Number(text.slice(text.lastIndexOf(":") + 1)));
const fd = udpSocket(2);
bindSocket(fd, parse(from));
const frame = new Uint8Array(60).fill(0xff, 0, 6);
frame.set([0x02, 0, 0, 0, 0, 0x66, 0x88, 0xb5], 6);
let sent = 0;
for (let i = 0; i < Number(count); i++) if (sendTo(fd, frame, 60, parse(to)) === 60) sent++;
console.log(sent);
`;

hostTest("udp:// takes frames only from its remote: injected datagrams are dropped and counted", [
  "tcpdump",
  "ping",
], async () => {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  await using runtime = await privateRuntime();
  const env = { XDG_RUNTIME_DIR: runtime.path };
  a.vdeno(["plug", "-n", "udpa", "tap://tap0", `udp://${a.address}:5000->${b.address}:6000`], {
    env,
  });
  b.vdeno(["plug", "tap://tap0", `udp://6000->${a.address}:5000`]);
  await a.waitForLink("tap0");
  await b.waitForLink("tap0");
  await a.configure("tap0", "10.9.2.1/24");
  await b.configure("tap0", "10.9.2.2/24");
  assert.ok(await a.pingable("10.9.2.2"));
  const sniffer = a.spawn(["tcpdump", "-i", "tap0", "-nn", "-e", "-l", "ether", "proto", "0x88b5"]);
  await sniffer.waitForOutput((text) => text.includes("listening on"));
  const inject = (host: typeof a, from: string) =>
    host.sh([Deno.execPath(), "eval", "--quiet", INJECT, from, `${a.address}:5000`, "100"]);
  // Another user on the plug's own host, and the remote host from a port that is not the link's.
  const sent = Number(await inject(a, `${a.address}:5999`)) +
    Number(await inject(b, `${b.address}:6001`));
  assert.equal(sent, 200);
  const ping = await a.run(["ping", "-c", "3", "-i", "0.2", "10.9.2.2"]);
  assert.equal(ping.code, 0, "the link itself still works");
  await sleep(300);
  await sniffer.stop("SIGINT");
  assert.doesNotMatch(sniffer.stdout, /0x88b5/, "no injected frame reached the TAP");
  const status = await run([...VDENO, "status", "--json", "udpa"], { env });
  const [tap, udp] = JSON.parse(status.stdout).plugs;
  assert.equal(udp.counters.dropUnknownSender, 200, "every injected datagram was counted");
  assert.equal(tap.counters.framesOut, udp.counters.framesIn);
});

/**
 * A QEMU stream client: `deno eval QEMU_CLIENT tcp|unix ADDRESS N SECONDS` connects, sends an ARP
 * request for 10.0.0.1 from 02:00:00:00:00:N every 200 ms, prints "reply" for each ARP reply to
 * it, and at the end (the time is up, or vdeno closed the connection) one JSON line.
 */
const QEMU_CLIENT = `
const [kind, where, n, seconds] = Deno.args;
const colon = where.lastIndexOf(":");
const conn = kind === "tcp"
  ? await Deno.connect({ hostname: where.slice(0, colon), port: Number(where.slice(colon + 1)) })
  : await Deno.connect({ transport: "unix", path: where });
const mac = [2, 0, 0, 0, 0, Number(n)];
const request = new Uint8Array(4 + 42);
new DataView(request.buffer).setUint32(0, 42);
request.fill(0xff, 4, 10);
request.set(mac, 10);
request.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1, ...mac, 10, 0, 0, Number(n)], 16);
request.set([10, 0, 0, 1], 42);
let replies = 0;
const end = (closed) => {
  console.log(JSON.stringify({ closed, replies }));
  Deno.exit(0);
};
setTimeout(() => end(false), Number(seconds) * 1000);
setInterval(() => conn.write(request).catch(() => {}), 200);
conn.write(request).catch(() => {});
let buffered = new Uint8Array(0);
const chunk = new Uint8Array(65536);
for (;;) {
  let count = null;
  try {
    count = await conn.read(chunk);
  } catch {
    // Reset by the other end: closed as well.
  }
  if (count === null) end(true);
  const joined = new Uint8Array(buffered.length + count);
  joined.set(buffered);
  joined.set(chunk.subarray(0, count), buffered.length);
  buffered = joined;
  while (buffered.length >= 4) {
    const length = new DataView(buffered.buffer, buffered.byteOffset).getUint32(0);
    if (buffered.length < 4 + length) break;
    const frame = buffered.subarray(4, 4 + length);
    if (frame[12] === 8 && frame[13] === 6 && frame[21] === 2 && frame[5] === Number(n)) {
      replies++;
      console.log("reply");
    }
    buffered = buffered.slice(4 + length);
  }
}
`;

/** Starts a QEMU_CLIENT in `host` (as `as` wraps it, e.g. another user). */
function qemuClient(
  host: Host,
  kind: "tcp" | "unix",
  where: string,
  n: number,
  seconds: number,
  as: (argv: string[]) => string[] = (argv) => argv,
) {
  return host.spawn(
    as([Deno.execPath(), "eval", "--quiet", QEMU_CLIENT, kind, where, String(n), String(seconds)]),
  );
}

const replies = (client: { stdout: string }) =>
  client.stdout.split("\n").filter((l) => l === "reply").length;

hostTest(
  "qemu:// over TCP refuses a second client while the VM is connected; the VM keeps its traffic",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    await using runtime = await privateRuntime();
    const env = { XDG_RUNTIME_DIR: runtime.path };
    const where = `${host.address}:5555`;
    host.vdeno(["plug", "-n", "qtcp", "tap://tap0", `qemu://${where}`], { env });
    await host.waitForLink("tap0");
    await host.configure("tap0", "10.0.0.1/24");
    const vm = qemuClient(host, "tcp", where, 2, 30);
    await vm.waitForOutput((text) => text.includes("reply"), 20_000);
    const intruder = qemuClient(host, "tcp", where, 3, 10);
    const verdict = await intruder.exited();
    assert.equal(verdict.code, 0, intruder.stderr);
    assert.deepEqual(JSON.parse(intruder.stdout.trim().split("\n").at(-1)!), {
      closed: true,
      replies: 0,
    });
    const before = replies(vm);
    await vm.waitForOutput(() => replies(vm) >= before + 3, 10_000);
    const status = await run([...VDENO, "status", "--json", "qtcp"], { env });
    const qemu = JSON.parse(status.stdout).plugs[1];
    assert.equal(qemu.vmConnected, true);
    assert.equal(qemu.connections, 1);
    assert.equal(qemu.refused, 1);
  },
);

hostTest(
  "qemu:// on a Unix socket takes only clients of the same user or root",
  ["setpriv"],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    await using runtime = await privateRuntime();
    await using attacker = await userHome(NOBODY);
    const env = { XDG_RUNTIME_DIR: runtime.path };
    const directory = await Deno.makeTempDir({ prefix: "vdeno-vm-" });
    try {
      await Deno.chmod(directory, 0o755);
      const path = `${directory}/vm.sock`;
      host.vdeno(["plug", "-n", "qunix", "tap://tap0", `qemu://${path}`], { env });
      await host.waitForLink("tap0");
      await host.configure("tap0", "10.0.0.1/24");
      await waitUntil("the VM socket", () => exists(path));
      assert.equal(Deno.lstatSync(path).mode! & 0o777, 0o600, "made mode 0600");
      // Opened to all, as one might for a QEMU run as another user: the credentials still decide.
      await Deno.chmod(path, 0o777);
      const intruder = qemuClient(host, "unix", path, 3, 10, (argv) => attacker.as(argv));
      await intruder.exited();
      assert.deepEqual(JSON.parse(intruder.stdout.trim().split("\n").at(-1)!), {
        closed: true,
        replies: 0,
      }, intruder.stderr);
      const vm = qemuClient(host, "unix", path, 2, 30);
      await vm.waitForOutput((text) => text.includes("reply"), 20_000);
      const status = await run([...VDENO, "status", "--json", "qunix"], { env });
      const qemu = JSON.parse(status.stdout).plugs[1];
      assert.equal(qemu.refused, 1);
      assert.equal(qemu.connections, 1);
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);

hostTest(
  "qemu:// never deletes what is at its path unless it is its own dead socket",
  [],
  async () => {
    await using lan = await Lan.create(1);
    const [host] = lan.hosts;
    const directory = await Deno.makeTempDir({ prefix: "vdeno-vm-" });
    try {
      const path = `${directory}/vm.sock`;
      const plug = () => host.run([...VDENO, "plug", "vxvde://239.8.0.7", `qemu://${path}`]);
      const precious = `${directory}/precious`;
      Deno.writeTextFileSync(precious, "keep me\n");
      for (
        const [what, make] of [
          ["a file", () => Deno.writeTextFileSync(path, "keep me\n")],
          ["a symbolic link", () => Deno.symlinkSync(precious, path)],
        ] as const
      ) {
        make();
        const result = await plug();
        assert.equal(result.code, 1, what);
        assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
        assert.match(result.stderr, /exists and is not a socket of this user's/);
        assert.equal(Deno.readTextFileSync(path), "keep me\n", `${what} is left as it was`);
        Deno.removeSync(path);
      }
      // A plug killed outright leaves its socket: the next one takes the path over.
      const killed = host.spawn([...VDENO, "plug", "vxvde://239.8.0.7", `qemu://${path}`]);
      await waitUntil("the VM socket", () => exists(path));
      await killed.stop("SIGKILL");
      const next = host.spawn([...VDENO, "plug", "vxvde://239.8.0.7", `qemu://${path}`]);
      // Connected and kept (not closed) until the client's time is up: the new plug listens there.
      let verdict = "";
      for (let attempt = 0; attempt < 40 && !verdict.includes("closed"); attempt++) {
        await sleep(250);
        const client = qemuClient(host, "unix", path, 2, 1);
        await client.exited();
        verdict = client.stdout.trim().split("\n").at(-1) ?? "";
      }
      assert.deepEqual(JSON.parse(verdict), { closed: false, replies: 0 }, next.stderr);
      assert.equal((await next.stop("SIGTERM")).code, 0);
      assert.ok(!exists(path), "its own socket is removed on exit");
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);
