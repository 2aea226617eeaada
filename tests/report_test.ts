/** bench/_report.ts: the figures as the README shows them. */

import assert from "node:assert/strict";
import { readmeTable, type Report, withReadmeTable } from "../bench/_report.ts";

const ROOT = new URL("..", import.meta.url);
const latest = JSON.parse(
  Deno.readTextFileSync(new URL("bench/results/latest.json", ROOT)),
) as Report;

Deno.test("the README's benchmark table is the one bench/results/latest.json makes", () => {
  const readme = Deno.readTextFileSync(new URL("README.md", ROOT));
  assert.equal(withReadmeTable(readme, latest), readme, "run deno task bench, or fix the table");
});

Deno.test("the README table pairs figures and writes - where a figure does not apply", () => {
  const lines = readmeTable(latest).split("\n");
  assert.equal(lines.length, 2 + 8);
  const cells = (label: string) =>
    lines.find((line) => line.startsWith(`| ${label}`))!.split("|").slice(2, -1).map((cell) =>
      cell.trim()
    );
  const tcp = latest.results.vdeno.tcp1_mbps.median!;
  assert.equal(cells("TCP 1 stream")[0].split(" ")[0], Math.round(tcp).toLocaleString("en-US"));
  assert.equal(cells("CPU per GB")[2], "-", "the kernel has no process");
  assert.match(cells("RTT p50 / p99 at no load")[3], /^\d\.\d\d \/ \d\.\d\d$/);
});
