/**
 * Readiness for a service manager: the `sd_notify` protocol of systemd's
 * `Type=notify`. When `$NOTIFY_SOCKET` names a Unix datagram socket (a path,
 * or '@' and a name in the abstract namespace), vdeno sends it `READY=1` once
 * its plugs are open and `STOPPING=1` when it begins to close them. Without
 * the variable nothing is sent; a message that cannot be sent is a warning,
 * never a reason to stop forwarding frames.
 *
 * @module
 */

import { getEnv } from "../ffi/os.ts";
import { sendUnixDatagram } from "../ffi/unix.ts";
import { log } from "../core/log.ts";

/** Sends `lines` (such as `READY=1`) to the service manager, if one listens. */
export function notifyServiceManager(...lines: string[]): void {
  const socket = getEnv("NOTIFY_SOCKET");
  if (!socket) return;
  try {
    sendUnixDatagram(socket, new TextEncoder().encode(lines.join("\n") + "\n"));
  } catch (error) {
    log("warn", `cannot notify the service manager at ${socket}: ${(error as Error).message}`);
  }
}
