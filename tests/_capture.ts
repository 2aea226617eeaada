/** Watching the underlay with tcpdump: which vxvde datagrams went where. */

import { type Host, sleep } from "./_harness.ts";
import { ETH_HEADER } from "../core/frames.ts";
import { HEADER_SIZE } from "../plugs/vxvde.ts";

/** A vxvde datagram carrying an ICMP echo of 56 data bytes: 84 bytes of IPv4 in a frame. */
export const PING_DATAGRAM = HEADER_SIZE + ETH_HEADER + 84;

/** One UDP datagram seen on the wire. */
export interface Datagram {
  source: string;
  destination: string;
  length: number;
}

/**
 * Runs `action` while tcpdump records the UDP datagrams on `iface` of `host`.
 * All UDP, not one port: unicast vxvde goes between two ephemeral ports.
 */
export async function captureUdp(
  host: Host,
  iface: string,
  action: () => Promise<unknown>,
): Promise<Datagram[]> {
  const tcpdump = host.spawn(["tcpdump", "-i", iface, "-nn", "-l", "-q", "udp"]);
  await tcpdump.waitForOutput((text) => text.includes("listening on"));
  await action();
  await sleep(500);
  await tcpdump.stop("SIGINT");
  const datagrams: Datagram[] = [];
  for (const line of tcpdump.stdout.split("\n")) {
    const match = /IP6? (\S+) > (\S+): UDP, length (\d+)/.exec(line);
    if (match) {
      datagrams.push({
        source: match[1],
        destination: match[2].replace(/:$/, ""),
        length: Number(match[3]),
      });
    }
  }
  return datagrams;
}

/** The address part of tcpdump's `addr.port`. */
export function addressOf(endpoint: string): string {
  return endpoint.slice(0, endpoint.lastIndexOf("."));
}
