/**
 * `vdeno ns`: a command in namespaces of its own, its interface on a VDE
 * network, for an unprivileged user (nobody, through setpriv) and for root.
 *
 * An unprivileged user can only create a TAP if /dev/net/tun is mode 0666,
 * as most distributions ship it; the tests set that mode when it is
 * stricter (never the other way).
 */

import assert from "node:assert/strict";
import { addressOf, captureUdp } from "./_capture.ts";
import {
  type Host,
  hostTest,
  Lan,
  onPath,
  type Requirement,
  type Requirements,
  requirements,
  run,
  type RunResult,
  VDENO,
} from "./_harness.ts";

const NOBODY = 65534;
/** A Deno cache nobody may write (its HOME does not exist), removed when the tests end. */
const nobodyDenoDir = Deno.makeTempDirSync({ prefix: "ns-test-deno-" });
Deno.chownSync(nobodyDenoDir, NOBODY, NOBODY);
globalThis.addEventListener("unload", () => Deno.removeSync(nobodyDenoDir, { recursive: true }));
/** argv prefix that runs a command as nobody, with no supplementary groups. */
const AS_NOBODY = [
  "setpriv",
  `--reuid=${NOBODY}`,
  `--regid=${NOBODY}`,
  "--clear-groups",
  "--",
  "env",
  "HOME=/nonexistent",
  "USER=nobody",
  `DENO_DIR=${nobodyDenoDir}`,
];
const users = { nobody: AS_NOBODY, root: [] } as const;
type User = keyof typeof users;

/** Lets every user open /dev/net/tun, as udev does on most distributions. */
async function tunForEveryone(): Promise<void> {
  const mode = (await Deno.stat("/dev/net/tun")).mode! & 0o777;
  if ((mode & 0o666) !== 0o666) await Deno.chmod("/dev/net/tun", mode | 0o666);
}

let userNamespacesProbed: Requirement | undefined;

/** Whether nobody may create user namespaces here, probed once when the tests register. */
function userNamespacesForNobody(): Requirement {
  if (userNamespacesProbed) return userNamespacesProbed;
  let ok = false, said = "setpriv or unshare is not installed";
  if (onPath("setpriv") && onPath("unshare")) {
    const probe = new Deno.Command(AS_NOBODY[0], {
      args: [...AS_NOBODY.slice(1), "unshare", "--user", "--map-root-user", "--net", "true"],
      stdout: "null",
      stderr: "piped",
    }).outputSync();
    ok = probe.success;
    said = new TextDecoder().decode(probe.stderr).trim();
  }
  userNamespacesProbed = { ok, why: `unprivileged user namespaces are disabled here (${said})` };
  return userNamespacesProbed;
}

/** What a test run as `user` needs. */
function nsNeeds(user: User, programs: string[] = []): Requirements {
  const extra = user === "nobody" && Deno.uid() === 0 ? [userNamespacesForNobody()] : [];
  return requirements(["unshare", "setpriv", "ping", ...programs], extra);
}

/** A shell script for inside: configure vde0 (or `iface`), then ping each peer, up to 30 tries. */
function pingScript(address: string, peers: string[], iface = "vde0"): string {
  return `
ip addr add ${address}/24 dev ${iface} && ip link set ${iface} up || exit 90
echo "inside $$ $PPID $(readlink /proc/self/ns/net)"
for peer in ${peers.join(" ")}; do
  result=fail; tries=0
  while [ $tries -lt 30 ]; do
    if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then result=ok; break; fi
    tries=$((tries + 1))
  done
  echo "ping $peer $result"
done
`;
}

/** The pids (the command's and its parent's) and network namespace the script reported from inside. */
function insideOf(output: string): { pids: number[]; netns: string } {
  const match = /^inside (\d+) (\d+) (net:\[\d+\])$/m.exec(output);
  assert.ok(match, `the command reported from inside:\n${output}`);
  return { pids: [Number(match[1]), Number(match[2])], netns: match[3] };
}

/** Asserts the command, its parent and the namespace (so its interfaces) are gone. */
async function assertNothingLeft(inside: { pids: number[]; netns: string }): Promise<void> {
  const holders: string[] = [];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      if ((await Deno.readLink(`/proc/${entry.name}/ns/net`)) === inside.netns) {
        holders.push(entry.name);
      }
    } catch { /* ended meanwhile */ }
  }
  assert.deepEqual(holders, [], `no process is left in the namespace ${inside.netns}`);
  for (const pid of inside.pids) {
    // An orphan that ended waits as a zombie until init reaps it: ended all the same.
    const state = await Deno.readTextFile(`/proc/${pid}/stat`).then(
      (stat) => stat.slice(stat.lastIndexOf(")") + 2)[0],
      () => "gone",
    );
    assert.ok(state === "gone" || state === "Z", `process ${pid} has ended (state ${state})`);
  }
}

/** The interface names in a host. */
async function links(host: Host): Promise<string[]> {
  const listing = await host.sh(["ip", "-o", "link", "show"]);
  return listing.split("\n").filter(Boolean).map((line) => line.split(": ")[1].split("@")[0]);
}

function lines(result: RunResult): string {
  return `status ${result.code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
}

for (const user of ["nobody", "root"] as const) {
  hostTest(
    `vdeno ns as ${user}: vde0 reaches a vdeno plug and a vde_plug TAP, the status passes through, the plug says goodbye and nothing is left`,
    nsNeeds(user, ["vde_plug", "tcpdump"]),
    async () => {
      await tunForEveryone();
      await using lan = await Lan.create(3);
      const [a, b, c] = lan.hosts;
      const group = "vxvde://234.0.0.1";
      a.vdeno(["plug", "tap://tap0", group]);
      c.spawn(["vde_plug", "tap://tap0", group]);
      await a.waitForLink("tap0");
      await c.waitForLink("tap0");
      await a.configure("tap0", "10.0.0.1/24");
      await c.configure("tap0", "10.0.0.3/24");
      const linksBefore = await links(b);
      const script = pingScript("10.0.0.2", ["10.0.0.1", "10.0.0.3"]) + "exit 42\n";
      let result: RunResult | undefined;
      const seen = await captureUdp(b, "eth0", async () => {
        result = await b.run([...users[user], ...VDENO, "ns", group, "--", "sh", "-c", script], {
          timeoutMs: 120_000,
        });
      });
      assert.ok(result);
      assert.match(result.stdout, /^ping 10\.0\.0\.1 ok$/m, `reaches vdeno plug: ${lines(result)}`);
      assert.match(result.stdout, /^ping 10\.0\.0\.3 ok$/m, `reaches vde_plug: ${lines(result)}`);
      assert.equal(result.code, 42, `the command's status: ${lines(result)}`);
      assert.equal(result.stderr, "");
      assert.ok(
        seen.some((d) =>
          d.length === 8 && addressOf(d.source) === b.address &&
          addressOf(d.destination) === "234.0.0.1"
        ),
        `an 8-byte goodbye went to the group: ${JSON.stringify(seen.slice(-5))}`,
      );
      await assertNothingLeft(insideOf(result.stdout));
      assert.deepEqual(await links(b), linksBefore, "no interface left in the caller's namespace");
    },
  );
}

hostTest(
  "vdens and an unprivileged vdeno ns on two hosts ping each other",
  nsNeeds("nobody", ["vdens"]),
  async () => {
    await tunForEveryone();
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    const group = "vxvde://234.0.0.2";
    // Each side pings the other, then waits for its stdin to close so the other can finish too.
    const vdens = a.spawn(
      [
        ...AS_NOBODY,
        "vdens",
        group,
        "sh",
        "-c",
        pingScript("10.0.0.1", ["10.0.0.2"]) + "read x; exit 0",
      ],
      { stdin: "piped" },
    );
    const ns = b.spawn([
      ...AS_NOBODY,
      ...VDENO,
      "ns",
      group,
      "sh",
      "-c",
      pingScript("10.0.0.2", ["10.0.0.1"]) + "read x; exit 0",
    ], { stdin: "piped" });
    const answered = /^ping \S+ (ok|fail)$/m;
    await vdens.waitForOutput((text) => answered.test(text), 90_000);
    await ns.waitForOutput((text) => answered.test(text), 90_000);
    await vdens.child.stdin.close();
    await ns.child.stdin.close();
    const [vdensStatus, nsStatus] = [await vdens.exited(), await ns.exited()];
    assert.match(vdens.stdout, /^ping 10\.0\.0\.2 ok$/m, `vdens reaches vdeno ns: ${vdens.stderr}`);
    assert.match(ns.stdout, /^ping 10\.0\.0\.1 ok$/m, `vdeno ns reaches vdens: ${ns.stderr}`);
    assert.equal(nsStatus.code, 0, ns.stderr);
    assert.equal(vdensStatus.code, 0, vdens.stderr);
    await assertNothingLeft(insideOf(ns.stdout));
  },
);

hostTest(
  "vdeno ns -m -i eth: eth0 and eth1 each reach only the network of their own VNI",
  nsNeeds("nobody", ["vde_plug"]),
  async () => {
    await tunForEveryone();
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const first = "vxvde://234.0.0.3/vni=11", second = "vxvde://234.0.0.3/vni=12";
    a.vdeno(["plug", "tap://tap0", first]);
    c.spawn(["vde_plug", "tap://tap0", second]);
    await a.waitForLink("tap0");
    await c.waitForLink("tap0");
    await a.configure("tap0", "10.0.0.1/24");
    await c.configure("tap0", "10.0.0.3/24");
    // One subnet on both interfaces: `ping -I` picks the interface, so only the VNI decides.
    const script = `
ip addr add 10.0.0.10/24 dev eth0 && ip link set eth0 up || exit 90
ip addr add 10.0.0.11/24 dev eth1 && ip link set eth1 up || exit 91
echo "inside $$ $PPID $(readlink /proc/self/ns/net)"
try() { # interface address tries
  n=0; while [ $n -lt $3 ]; do
    if ping -c 1 -W 1 -I $1 $2 >/dev/null 2>&1; then echo "$1 $2 ok"; return; fi
    n=$((n + 1))
  done
  echo "$1 $2 fail"
}
try eth0 10.0.0.1 30; try eth1 10.0.0.3 30; try eth0 10.0.0.3 3; try eth1 10.0.0.1 3
`;
    const result = await b.run(
      [...AS_NOBODY, ...VDENO, "ns", "-m", "-i", "eth", first, second, "--", "sh", "-c", script],
      { timeoutMs: 120_000 },
    );
    assert.equal(result.code, 0, lines(result));
    const reached = Object.fromEntries(
      [...result.stdout.matchAll(/^(eth\d \S+) (ok|fail)$/gm)].map((m) => [m[1], m[2]]),
    );
    assert.deepEqual(reached, {
      "eth0 10.0.0.1": "ok",
      "eth1 10.0.0.3": "ok",
      "eth0 10.0.0.3": "fail",
      "eth1 10.0.0.1": "fail",
    });
    await assertNothingLeft(insideOf(result.stdout));
  },
);

for (const user of ["nobody", "root"] as const) {
  hostTest(
    `vdeno ns as ${user}: -H, -R and -r set hostname and resolv.conf inside only; loopback only without a VNL; -s keeps CAP_SYS_ADMIN`,
    nsNeeds(user),
    async () => {
      await tunForEveryone();
      const as = users[user];
      const hostBefore = Deno.hostname();
      const resolvBefore = await Deno.readTextFile("/etc/resolv.conf");
      const report =
        `hostname; cat /etc/resolv.conf; ip -o link show; grep CapBnd /proc/self/status; exit 3`;
      const withAddresses = await run([
        ...as,
        ...VDENO,
        "ns",
        "-H",
        `box-${user}`,
        "-R",
        "192.0.2.53,192.0.2.54",
        "-",
        "sh",
        "-c",
        report,
      ]);
      assert.equal(withAddresses.code, 3, lines(withAddresses));
      const [hostname, ...rest] = withAddresses.stdout.split("\n");
      assert.equal(hostname, `box-${user}`);
      assert.match(
        withAddresses.stdout,
        /^nameserver 192\.0\.2\.53\nnameserver 192\.0\.2\.54\n1: lo:/m,
      );
      assert.equal(rest.filter((line) => /^\d+: /.test(line)).length, 1, "only lo");
      assert.match(withAddresses.stdout, /^1: lo: <LOOPBACK,UP,/m, "lo is up");
      const bounding = (text: string) => BigInt("0x" + /CapBnd:\s+([0-9a-f]+)/.exec(text)![1]);
      assert.equal(bounding(withAddresses.stdout) & (1n << 21n), 0n, "no CAP_SYS_ADMIN without -s");

      const file = await Deno.makeTempFile({ prefix: "ns-test-resolv-" });
      try {
        await Deno.writeTextFile(file, "nameserver 198.51.100.7\n# from -r\n");
        await Deno.chmod(file, 0o644);
        const withFile = await run([
          ...as,
          ...VDENO,
          "ns",
          "-s",
          "-r",
          file,
          "no",
          "sh",
          "-c",
          report,
        ]);
        assert.equal(withFile.code, 3, lines(withFile));
        assert.match(withFile.stdout, /^nameserver 198\.51\.100\.7\n# from -r\n/m);
        assert.notEqual(bounding(withFile.stdout) & (1n << 21n), 0n, "CAP_SYS_ADMIN with -s");
      } finally {
        await Deno.remove(file);
      }

      const shell = await run([...as, "env", "SHELL=/bin/sh", ...VDENO, "ns"], {
        stdin: "echo in-shell $(hostname); exit 5\n",
      });
      assert.equal(shell.code, 5, `$SHELL runs without a command: ${lines(shell)}`);
      assert.match(shell.stdout, /^in-shell /m);
      const killed = await run([...as, ...VDENO, "ns", "-", "sh", "-c", "kill -TERM $$"]);
      assert.equal(killed.code, 128 + 15, `killed by SIGTERM: 128+15: ${lines(killed)}`);

      assert.equal(Deno.hostname(), hostBefore, "the hostname outside is unchanged");
      assert.equal(await Deno.readTextFile("/etc/resolv.conf"), resolvBefore, "resolv.conf too");
      const tempFiles = [...Deno.readDirSync("/tmp")].filter((e) => e.name.startsWith("vdeno-ns-"));
      assert.deepEqual(tempFiles, [], "no file is left in /tmp");
    },
  );
}

/**
 * `vdeno ns ARGS...` as nobody on a terminal of its own: script(1) runs it on a
 * pseudo-terminal, where a ^C written becomes SIGINT for the foreground group.
 */
class TerminalSession {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #reader: ReadableStreamDefaultReader<string>;
  /** Ends a session that hangs (a ^C that went nowhere) so the test fails instead. */
  readonly #limit: ReturnType<typeof setTimeout>;
  output = "";

  constructor(nsArgs: string[]) {
    const quoted = nsArgs.map((arg) => `'${arg.replaceAll("'", `'"'"'`)}'`);
    this.#child = new Deno.Command("script", {
      args: ["-qec", ["exec", ...AS_NOBODY, ...VDENO, "ns", ...quoted].join(" "), "/dev/null"],
      env: { SHELL: "/bin/sh" },
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#reader = this.#child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#limit = setTimeout(() => this.#child.kill("SIGKILL"), 60_000);
  }

  /** Reads until `pattern` appears in the output (or the output ends). */
  async expect(pattern: RegExp): Promise<void> {
    while (!pattern.test(this.output)) {
      const { value, done } = await this.#reader.read();
      if (done) return;
      this.output += value;
    }
  }

  /** Types `text` on the terminal. */
  async type(text: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(text));
  }

  /** Reads the rest of the output; resolves to the exit status (script -e passes it on). */
  async finish(): Promise<number> {
    await this.expect(/$^/); // never matches: reads to the end
    await this.#writer.close().catch(() => {});
    const status = await this.#child.status;
    clearTimeout(this.#limit);
    return status.code;
  }
}

hostTest(
  "Ctrl-C on the terminal reaches the command; vdeno ns survives it and passes the status on",
  nsNeeds("nobody", ["script", "bash"]),
  async () => {
    await tunForEveryone();
    const trapping = new TerminalSession([
      "-",
      "sh",
      "-c",
      'trap "echo got-sigint; exit 7" INT; echo ready; while :; do sleep 0.1; done',
    ]);
    await trapping.expect(/ready/);
    await trapping.type("\x03");
    const trappingStatus = await trapping.finish();
    assert.match(trapping.output, /got-sigint/, trapping.output);
    assert.equal(trappingStatus, 7, `the command's own exit status: ${trapping.output}`);

    // With a VNL the parent hears signals in its cable's poll, on the main thread.
    const plain = new TerminalSession(["null://", "sh", "-c", "echo ready; exec sleep 1000"]);
    await plain.expect(/ready/);
    await plain.type("\x03");
    assert.equal(await plain.finish(), 128 + 2, `sleep killed by SIGINT: ${plain.output}`);

    // An interactive shell inside: ^C stops its foreground job, the shell goes on.
    const shell = new TerminalSession(["-", "bash", "--norc", "--noprofile", "-i"]);
    await shell.expect(/# $/);
    await shell.type("sh -c 'echo started; exec sleep 1000'\n");
    await shell.expect(/^started\r?$/m);
    await shell.type("\x03");
    // bash drops the rest of a line whose job was interrupted, and prompts again.
    await shell.expect(/\^C[^]*# $/);
    await shell.type('echo "status $?"; echo alive-$((40 + 2)); exit 4\n');
    const shellStatus = await shell.finish();
    assert.match(shell.output, /^status 130\r?$/m, `the job got SIGINT: ${shell.output}`);
    assert.match(shell.output, /^alive-42\r?$/m, `the shell survived: ${shell.output}`);
    assert.equal(shellStatus, 4, shell.output);
  },
);

for (
  const [signal, vnl] of [["SIGTERM", "-"], ["SIGTERM", "null://"], ["SIGKILL", "-"]] as const
) {
  const what = signal === "SIGTERM"
    ? `vdeno ns passes SIGTERM on to the command (${
      vnl === "-" ? "no VNL" : "one VNL: heard in the cable's poll"
    })`
    : "when vdeno ns is killed, the command gets SIGTERM and nothing is left";
  hostTest(what, nsNeeds("nobody"), async () => {
    await tunForEveryone();
    const script = `trap "echo got-sigterm; exit 9" TERM
echo "inside $$ $PPID $(readlink /proc/self/ns/net)"
while :; do sleep 0.1; done`;
    const child = new Deno.Command(AS_NOBODY[0], {
      args: [...AS_NOBODY.slice(1), ...VDENO, "ns", vnl, "sh", "-c", script],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let output = "";
    while (!output.includes("inside")) {
      const { value, done } = await reader.read();
      if (done) break;
      output += value;
    }
    child.kill(signal); // setpriv and env exec: this is vdeno ns itself
    // The stream ends once the command and the helper, which share it, have exited.
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      output += value;
    }
    const status = await child.status;
    await child.stderr.cancel();
    assert.match(output, /got-sigterm/);
    const inside = insideOf(output);
    if (signal === "SIGTERM") assert.equal(status.code, 9, "the command's status");
    await assertNothingLeft(inside);
  });
}

hostTest(
  "vdeno ns with one VNL runs its cable on its main thread, with no Worker; -m with two runs a Worker each",
  nsNeeds("root"),
  async () => {
    await tunForEveryone();
    // The command (which the helper became) lists the threads of vdeno ns, its parent.
    const script = "cat /proc/$PPID/task/*/comm";
    const threadsOf = async (nsArgs: string[]) => {
      const result = await run([...VDENO, "ns", ...nsArgs, "--", "sh", "-c", script]);
      assert.equal(result.code, 0, lines(result));
      return result.stdout.split("\n").filter(Boolean);
    };
    // Deno names the thread of each Worker worker-N.
    const workers = (threads: string[]) => threads.filter((name) => /^worker-\d+$/.test(name));
    const two = await threadsOf(["-m", "null://", "null://"]);
    assert.equal(workers(two).length, 2, `one Worker per VNL with -m: ${two.join(", ")}`);
    const one = await threadsOf(["null://"]);
    assert.deepEqual(workers(one), [], `no Worker with one VNL: ${one.join(", ")}`);
  },
);

hostTest(
  "the command is the namespace's first process, started with no signal blocked or ignored",
  nsNeeds("nobody"),
  async () => {
    await tunForEveryone();
    // The helper becomes the command: the command's parent is vdeno ns itself, whose runtime
    // ignores SIGPIPE, which must not reach the command.
    const script = `grep -E '^Sig(Blk|Ign):' /proc/self/status; echo "parent $PPID"`;
    const child = new Deno.Command(AS_NOBODY[0], {
      args: [...AS_NOBODY.slice(1), ...VDENO, "ns", "null://", "sh", "-c", script],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const result = await child.output();
    const stdout = new TextDecoder().decode(result.stdout);
    assert.equal(result.code, 0, stdout + new TextDecoder().decode(result.stderr));
    assert.match(stdout, /^SigBlk:\s+0+$/m, stdout);
    assert.match(stdout, /^SigIgn:\s+0+$/m, stdout);
    assert.match(stdout, new RegExp(`^parent ${child.pid}$`, "m"), "vdeno ns is the parent");
  },
);

hostTest("vdeno ns says in one line what is wrong", nsNeeds("nobody"), async () => {
  await tunForEveryone();
  const oneLine = (result: RunResult, code: number, pattern: RegExp) => {
    assert.equal(result.code, code, lines(result));
    assert.match(result.stderr, pattern);
    assert.equal(result.stderr.trim().split("\n").length, 1, `one line: ${result.stderr}`);
  };
  oneLine(
    await run([...AS_NOBODY, ...VDENO, "ns", "nosuch://x", "true"]),
    1,
    /^vdeno ns: Unknown VNL scheme nosuch:\/\//,
  );
  oneLine(await run([...VDENO, "ns", "--bogus"]), 2, /^vdeno ns: .*bogus/);
  oneLine(await run([...VDENO, "ns", "-m"]), 2, /^vdeno ns: -m needs at least one VNL/);
  oneLine(
    await run([...AS_NOBODY, ...VDENO, "ns", "-", "/nonexistent/command"]),
    127,
    /^vdeno ns: Cannot run \/nonexistent\/command/,
  );
  oneLine(
    await run([...AS_NOBODY, ...VDENO, "ns", "-r", "/nonexistent/resolv.conf", "-", "true"]),
    1,
    /^vdeno ns: Cannot bind \/nonexistent\/resolv.conf over \/etc\/resolv.conf: No such file/,
  );
  oneLine(
    await run([...AS_NOBODY, "PATH=/nonexistent", ...VDENO, "ns", "-", "true"]),
    1,
    /^vdeno ns: unshare is not on PATH/,
  );
  // A user namespace of our own where no further one may be made.
  const disabled = await run([
    ...AS_NOBODY,
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"',
    "sh",
    ...VDENO,
    "ns",
    "-",
    "true",
  ]);
  oneLine(disabled, 1, /^vdeno ns: Cannot create a user namespace: user namespaces are disabled/);
});
