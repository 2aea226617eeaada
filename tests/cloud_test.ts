/**
 * The Local Area Cloud of VDE's tutorial, end to end, with a real VM: three
 * members on one vxvde group, each on a namespace host of its own LAN:
 *
 * - host A: a TAP, 10.0.0.254/24, plugged by `vdeno plug tap://tap0 vxvde://234.0.0.1`;
 * - host B: a namespace with vde0 10.0.0.20/24, by `vdeno ns vxvde://234.0.0.1`;
 * - host C: a QEMU VM under TCG, 10.0.0.21/24, its virtio NIC's MAC from `vdeno randmac`,
 *   connected by QEMU's own vde backend, or through vdeno's udp:// and qemu:// VNLs for
 *   QEMU's dgram and stream backends.
 *
 * Every member pings every other; the test asserts every pair.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, requirements, run, VDENO, waitUntil } from "./_harness.ts";
import { installedCloudKernel, type VmImage, vmImage } from "../app/vm/image.ts";
import { TestVm } from "./vm/qemu.ts";

const GROUP = "vxvde://234.0.0.1";
const TAP_ADDRESS = "10.0.0.254";
const NS_ADDRESS = "10.0.0.20";
const VM_ADDRESS = "10.0.0.21";

let image: Promise<VmImage> | undefined;

/** The VM image, built at most once per test run. */
function testImage(): Promise<VmImage> {
  image ??= vmImage();
  return image;
}

/** A cloud member that can ping the others. */
interface Member {
  name: string;
  address: string;
  ping(address: string): Promise<boolean>;
}

async function startTapMember(host: Host, name: string, address: string): Promise<Member> {
  host.vdeno(["plug", `tap://${name}`, GROUP]);
  await host.waitForLink(name);
  await host.configure(name, `${address}/24`);
  return { name: `${name} ${address}`, address, ping: (to) => host.pingable(to, 30_000) };
}

// Runs in the namespace: configures vde0, then pings each address it reads
// on stdin for up to 30 s and answers with one line.
const NAMESPACE_SHELL = `
ip link set lo up
ip addr add ${NS_ADDRESS}/24 dev vde0 && ip link set vde0 up && echo ns-ready
while read peer; do
  result=fail; tries=0
  while [ $tries -lt 30 ]; do
    if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then result=ok; break; fi
    tries=$((tries + 1))
  done
  echo "ns-ping $peer $result"
done
`;

async function startNamespaceMember(host: Host, command: string[]): Promise<Member> {
  const shell = host.spawn([...command, GROUP, "sh", "-c", NAMESPACE_SHELL], { stdin: "piped" });
  await shell.waitForOutput((text) => text.includes("ns-ready"), 15_000);
  const name = `vdeno ns ${NS_ADDRESS}`;
  const writer = shell.child.stdin.getWriter();
  return {
    name,
    address: NS_ADDRESS,
    async ping(address) {
      const answer = new RegExp(`^ns-ping ${address.replaceAll(".", "\\.")} (ok|fail)$`, "m");
      await writer.write(new TextEncoder().encode(`${address}\n`));
      await shell.waitForOutput((text) => answer.test(text), 60_000);
      // Each member pings each address once, so the first answer is this one.
      return answer.exec(shell.stdout)![1] === "ok";
    },
  };
}

/** How host C connects its VM: the QEMU `-netdev` and whatever must run before QEMU starts. */
interface VmConnection {
  netdev: string;
  prepare?(host: Host): Promise<void>;
}

/** What a test with a VM in the cloud needs. */
const vmNeeds = (more: string[] = []) =>
  requirements(["qemu-system-x86_64", "ping", "cpio", "ss", ...more], [
    {
      ok: installedCloudKernel() !== undefined,
      why: "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)",
    },
    { ok: isFile("/bin/busybox"), why: "no /bin/busybox (install busybox-static)" },
  ]);

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

async function cloudWithVm(connection: VmConnection): Promise<void> {
  const nsCommand = [...VDENO, "ns"];
  const builtImage = await testImage();
  await using lan = await Lan.create(3);
  const [a, b, c] = lan.hosts;
  const tapMember = await startTapMember(a, "tap0", TAP_ADDRESS);
  const nsMember = await startNamespaceMember(b, nsCommand);
  await connection.prepare?.(c);

  const randmac = await run([...VDENO, "randmac"]);
  assert.equal(randmac.code, 0, randmac.stderr);
  const mac = randmac.stdout.trim();
  const vm = new TestVm(c, builtImage, {
    address: `${VM_ADDRESS}/24`,
    peers: [NS_ADDRESS, TAP_ADDRESS],
    mac,
    netdev: connection.netdev,
  });
  try {
    const fromVm = await vm.pingResults();
    assert.match(vm.console, new RegExp(`vdeno-vm up ${VM_ADDRESS}/24 ${mac}`));
    const members = [tapMember, nsMember];
    const reached: Record<string, boolean> = {};
    for (const member of members) {
      reached[`vm ${VM_ADDRESS} -> ${member.name}`] = fromVm.get(member.address) === "ok";
    }
    for (const member of members) {
      for (const other of members) {
        if (other !== member) {
          reached[`${member.name} -> ${other.name}`] = await member.ping(other.address);
        }
      }
      reached[`${member.name} -> vm ${VM_ADDRESS}`] = await member.ping(VM_ADDRESS);
    }
    const everyPair = Object.fromEntries(Object.keys(reached).map((pair) => [pair, true]));
    assert.deepEqual(
      reached,
      everyPair,
      `Some members cannot reach others; VM console:\n${vm.console}`,
    );
  } finally {
    await vm.powerOff();
  }
}

hostTest(
  "a TAP, a namespace and a QEMU VM on its vde backend ping each other over vxvde",
  vmNeeds(),
  async () => {
    await cloudWithVm({ netdev: `vde,id=net0,sock=${GROUP}` });
  },
);

hostTest(
  "a QEMU VM on its dgram backend joins the cloud through vdeno plug udp://",
  vmNeeds(),
  async () => {
    const vdenoPort = 5001, qemuPort = 5000;
    await cloudWithVm({
      netdev: "dgram,id=net0,local.type=inet,local.host=127.0.0.1,local.port=" + qemuPort +
        ",remote.type=inet,remote.host=127.0.0.1,remote.port=" + vdenoPort,
      async prepare(host) {
        host.vdeno(["plug", GROUP, `udp://127.0.0.1:${vdenoPort}->127.0.0.1:${qemuPort}`]);
        await waitUntil(`vdeno plug on UDP port ${vdenoPort}`, async () => {
          const listing = await host.run(["ss", "-Hlun", `sport = :${vdenoPort}`]);
          return listing.stdout.includes(`:${vdenoPort}`);
        });
      },
    });
  },
);

hostTest(
  "a QEMU VM on its stream backend joins the cloud through vdeno plug qemu://",
  vmNeeds(),
  async () => {
    const directory = await Deno.makeTempDir({ prefix: "vdeno-cloud-" });
    const path = `${directory}/vm.sock`;
    try {
      await cloudWithVm({
        netdev: `stream,id=net0,server=off,addr.type=unix,addr.path=${path}`,
        async prepare(host) {
          host.vdeno(["plug", GROUP, `qemu://${path}`]);
          await waitUntil(`vdeno plug listening on ${path}`, async () => {
            const listing = await host.run(["ss", "-Hlx", `src = ${path}`]);
            return listing.stdout.includes(path);
          });
        },
      });
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);

hostTest(
  "a QEMU VM on its older socket backend joins through udp:// (socket,udp=) and qemu:// over TCP (socket,connect=)",
  vmNeeds(),
  async (t) => {
    await t.step("socket,udp=", async () => {
      await cloudWithVm({
        netdev: "socket,id=net0,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000",
        async prepare(host) {
          host.vdeno(["plug", GROUP, "udp://127.0.0.1:5001->127.0.0.1:5000"]);
          await waitUntil("vdeno plug on UDP port 5001", async () => {
            const listing = await host.run(["ss", "-Hlun", "sport = :5001"]);
            return listing.stdout.includes(":5001");
          });
        },
      });
    });
    await t.step("socket,connect=", async () => {
      await cloudWithVm({
        netdev: "socket,id=net0,connect=127.0.0.1:5555",
        async prepare(host) {
          host.vdeno(["plug", GROUP, "qemu://127.0.0.1:5555"]);
          await waitUntil("vdeno plug listening on TCP port 5555", async () => {
            const listing = await host.run(["ss", "-Hltn", "sport = :5555"]);
            return listing.stdout.includes(":5555");
          });
        },
      });
    });
  },
);

/** A vde_switch in host C, in a directory of the test's own, bridged onto the cloud by `plugVnl`. */
async function cloudWithSwitch(plugVnl: (switchDir: string) => string) {
  const directory = await Deno.makeTempDir({ prefix: "vdeno-switch-" });
  const switchDir = `${directory}/sw`;
  try {
    await cloudWithVm({
      netdev: `vde,id=net0,sock=${switchDir}`,
      async prepare(host) {
        await host.sh(["vde_switch", "-s", switchDir, "-d", "-p", `${directory}/pid`]);
        await waitUntil(`vde_switch at ${switchDir}`, () => exists(`${switchDir}/ctl`));
        const plug = host.vdeno(["plug", plugVnl(switchDir), GROUP]);
        // The switch shows a port for the plug once it is on.
        await waitUntil(`vdeno plug on ${switchDir}`, async () => {
          const listing = await host.run(["ss", "-Hx", `src = ${switchDir}/ctl`]);
          return listing.stdout.trim() !== "" || plug.stderr !== "";
        });
        assert.equal(plug.stderr, "", `vdeno plug said: ${plug.stderr}`);
      },
    });
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

function exists(path: string): Promise<boolean> {
  return Deno.stat(path).then(() => true, () => false);
}

hostTest(
  "a QEMU VM on a vde_switch joins the cloud through vdeno's native vde://",
  vmNeeds(["vde_switch"]),
  async () => {
    await cloudWithSwitch((switchDir) => `vde://${switchDir}`);
  },
);

hostTest(
  "a QEMU VM on a vde_switch joins the cloud through libvdeplug's vde:// (vdeplug://)",
  vmNeeds(["vde_switch"]),
  async () => {
    await cloudWithSwitch((switchDir) => `vdeplug://vde://${switchDir}`);
  },
);
