/**
 * A tiny VM image for the end-to-end tests and the demo, built from Debian packages that
 * are installed on the test machine: the `linux-image-*-cloud-amd64` kernel
 * and an initramfs of `busybox-static` plus the virtio network modules.
 *
 * The guest's init reads its address and the peers to ping from the kernel
 * command line (`vdeno.address=10.0.0.21/24 vdeno.peers=10.0.0.20,10.0.0.254`),
 * configures eth0, pings each peer and prints one line per peer on the serial
 * console:
 *
 *     vdeno-vm ping 10.0.0.20 ok tries=1 uptime=2.51
 *     vdeno-vm ping 10.0.0.254 fail tries=10 uptime=23.02
 *
 * then `vdeno-vm ready` and waits for a line `poweroff` on the console (so the
 * other members can ping it meanwhile), or 120 s, before it powers off.
 *
 * The image is built once into a cache directory outside the repository
 * (`$XDG_CACHE_HOME/vdeno-vm`, else `~/.cache/vdeno-vm`), keyed by the kernel
 * version and a hash of what goes into it, and renamed into place whole, so
 * concurrent test runs never see half an image.
 *
 * @module
 */

/** The virtio network driver and what it depends on, in load order. */
export const VIRTIO_NET_MODULES = [
  "kernel/drivers/virtio/virtio_ring",
  "kernel/drivers/virtio/virtio",
  "kernel/drivers/virtio/virtio_pci_modern_dev",
  "kernel/drivers/virtio/virtio_pci_legacy_dev",
  "kernel/drivers/virtio/virtio_pci",
  "kernel/net/core/failover",
  "kernel/drivers/net/net_failover",
  "kernel/drivers/net/virtio_net",
] as const;

/** Where the guest's result lines start. */
export const RESULT_PREFIX = "vdeno-vm";

/** Paths of a built image. */
export interface VmImage {
  /** The kernel (`bzImage`), read from /boot. */
  kernel: string;
  /** The initramfs: an uncompressed newc cpio archive. */
  initramfs: string;
  /** The kernel version it was built for. */
  kernelVersion: string;
}

const BUSYBOX = "/bin/busybox";

// The guest's /init, run by busybox ash. Modules are loaded by path, in order,
// because busybox insmod does not resolve dependencies.
const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in ${VIRTIO_NET_MODULES.map((path) => path.split("/").pop()).join(" ")}; do
  insmod /modules/$module.ko || echo "${RESULT_PREFIX} error insmod $module"
done
address=; peers=
for word in $(cat /proc/cmdline); do
  case $word in
    vdeno.address=*) address=\${word#vdeno.address=} ;;
    vdeno.peers=*) peers=\${word#vdeno.peers=} ;;
  esac
done
ip link set lo up
tries=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $tries -lt 50 ]; do
  sleep 0.1; tries=$((tries + 1))
done
ip addr add "$address" dev eth0 && ip link set eth0 up || echo "${RESULT_PREFIX} error eth0"
echo "${RESULT_PREFIX} up $address $(cat /sys/class/net/eth0/address)"
for peer in $(echo "$peers" | tr , ' '); do
  result=fail
  for try in 1 2 3 4 5 6 7 8 9 10; do
    if ping -c 1 -W 2 "$peer" >/dev/null 2>&1; then result=ok; break; fi
  done
  echo "${RESULT_PREFIX} ping $peer $result tries=$try uptime=$(cut -d' ' -f1 /proc/uptime)"
done
echo "${RESULT_PREFIX} ready"
while read -t 120 line; do
  [ "$line" = poweroff ] && break
done
echo "${RESULT_PREFIX} poweroff"
poweroff -f
`;

/** The cache directory for VM images. */
export function cacheDirectory(): string {
  const base = Deno.env.get("XDG_CACHE_HOME") ||
    `${Deno.env.get("HOME") || "/var/tmp"}/.cache`;
  return `${base}/vdeno-vm`;
}

/** The version of the newest installed `*-cloud-amd64` kernel, or undefined. */
export function installedCloudKernel(): string | undefined {
  const versions: string[] = [];
  try {
    for (const entry of Deno.readDirSync("/boot")) {
      const match = /^vmlinuz-(.+-cloud-amd64)$/.exec(entry.name);
      if (match) versions.push(match[1]);
    }
  } catch {
    return undefined;
  }
  return versions.sort().pop();
}

async function run(argv: string[], cwd?: string): Promise<void> {
  const output = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!output.success) {
    throw new Error(
      `${argv.join(" ")} failed: ${new TextDecoder().decode(output.stderr).trim()}`,
    );
  }
}

/** Finds a module as installed, plain or compressed. */
function findModule(kernelVersion: string, path: string): string {
  for (const suffix of [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]) {
    const candidate = `/lib/modules/${kernelVersion}/${path}${suffix}`;
    try {
      Deno.statSync(candidate);
      return candidate;
    } catch {
      // Try the next compression.
    }
  }
  throw new Error(`Kernel module ${path} not found for ${kernelVersion}`);
}

async function imageKey(kernelVersion: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(INIT_SCRIPT + VIRTIO_NET_MODULES.join()),
  );
  const hex = [...new Uint8Array(digest).slice(0, 6)]
    .map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${kernelVersion}-${hex}`;
}

/**
 * Returns the VM image for the installed cloud kernel, building it first if
 * the cache does not hold it yet.
 */
export async function vmImage(): Promise<VmImage> {
  const kernelVersion = installedCloudKernel();
  if (!kernelVersion) {
    throw new Error("No /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64");
  }
  const kernel = `/boot/vmlinuz-${kernelVersion}`;
  const directory = `${cacheDirectory()}/${await imageKey(kernelVersion)}`;
  const initramfs = `${directory}/initramfs.cpio`;
  try {
    Deno.statSync(initramfs);
    return { kernel, initramfs, kernelVersion };
  } catch {
    // Not built yet.
  }
  await Deno.mkdir(cacheDirectory(), { recursive: true });
  const staging = await Deno.makeTempDir({ dir: cacheDirectory(), prefix: ".build-" });
  try {
    const root = `${staging}/root`;
    for (const sub of ["bin", "proc", "sys", "dev", "modules"]) {
      await Deno.mkdir(`${root}/${sub}`, { recursive: true });
    }
    await Deno.copyFile(BUSYBOX, `${root}/bin/busybox`);
    await Deno.chmod(`${root}/bin/busybox`, 0o755);
    await Deno.writeTextFile(`${root}/init`, INIT_SCRIPT, { mode: 0o755 });
    await Deno.chmod(`${root}/init`, 0o755);
    for (const path of VIRTIO_NET_MODULES) {
      const source = findModule(kernelVersion, path);
      const name = path.split("/").pop()!;
      const target = `${root}/modules/${name}.ko`;
      // busybox insmod loads plain .ko files only: decompress what is compressed.
      if (source.endsWith(".xz")) await run(["sh", "-c", `xz -dc '${source}' > '${target}'`]);
      else if (source.endsWith(".zst")) {
        await run(["sh", "-c", `zstd -dc '${source}' > '${target}'`]);
      } else if (source.endsWith(".gz")) {
        await run(["sh", "-c", `gzip -dc '${source}' > '${target}'`]);
      } else await Deno.copyFile(source, target);
    }
    await run(
      ["sh", "-c", "find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > ../initramfs.cpio"],
      root,
    );
    await Deno.mkdir(directory, { recursive: true });
    // rename is atomic: a concurrent run sees the whole archive or none.
    await Deno.rename(`${staging}/initramfs.cpio`, initramfs);
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
  }
  return { kernel, initramfs, kernelVersion };
}
