/** bench/_report.ts: the figures as the README shows them. */

import assert from "node:assert/strict";
import { ratiosOf, readmeTable, type Report, withReadmeTable } from "../bench/_report.ts";

const ROOT = new URL("..", import.meta.url);
const latest = JSON.parse(
  Deno.readTextFileSync(new URL("bench/results/latest.json", ROOT)),
) as Report;

Deno.test("the README's benchmark table is the one bench/results/latest.json makes", () => {
  const readme = Deno.readTextFileSync(new URL("README.md", ROOT));
  assert.equal(withReadmeTable(readme, latest), readme, "run deno task bench, or fix the table");
});

Deno.test("the README table pairs figures and writes - where a figure does not apply", () => {
  const lines = readmeTable(latest).split("\n\n")[0].split("\n");
  assert.equal(lines.length, 2 + 8);
  const cells = (label: string) =>
    lines.find((line) => line.startsWith(`| ${label}`))!.split("|").slice(2, -1).map((cell) =>
      cell.trim()
    );
  const tcp = latest.results.vdeno.tcp1_mbps.median!;
  assert.equal(cells("TCP 1 stream")[0].split(" ")[0], Math.round(tcp).toLocaleString("en-US"));
  assert.equal(cells("CPU per GB")[2], "-", "the kernel has no process");
  // Ratios have three significant digits: 1.30, 0.881.
  const ratio = String.raw`(\d\.\d\d|0\.\d{3})`;
  assert.match(cells("RTT p50 / p99 at no load")[3], new RegExp(`^${ratio} / ${ratio}$`));
  assert.equal(
    cells("TCP 1 stream")[4],
    (tcp / latest.results.kernel.tcp1_mbps.median!).toPrecision(3),
    "the column vdeno / kernel",
  );
  assert.equal(cells("CPU per GB")[4], "-", "no ratio to the kernel's cost");
});

Deno.test("latest.json's ratios are those of its medians", () => {
  assert.deepEqual(latest.ratios, ratiosOf(latest.results));
  assert.ok(latest.ratios["vdeno / vde_plug"] && latest.ratios["vdeno / kernel"]);
});

Deno.test("a run with vdeno ns and vdens adds their table, with the ratio vdeno-ns / vdens", () => {
  // The layout only: the namespace columns take the figures of two recorded contenders.
  const results = {
    ...latest.results,
    "vdeno-ns": latest.results.vdeno,
    vdens: latest.results.vde_plug,
  };
  const report: Report = { ...latest, results, ratios: ratiosOf(results) };
  const tables = readmeTable(report).split("\n\n");
  assert.equal(tables.length, 2);
  assert.equal(tables[0], readmeTable(latest).split("\n\n")[0], "the first table stays");
  const lines = tables[1].split("\n");
  assert.deepEqual(lines[0].split("|").slice(1, -1).map((cell) => cell.trim()), [
    "figure",
    "vdeno ns",
    "vdens",
    "vdeno-ns / vdens",
  ]);
  const tcp = lines.find((line) => line.startsWith("| TCP 1 stream"))!.split("|").at(-2)!.trim();
  assert.equal(tcp, report.ratios["vdeno / vde_plug"].tcp1_mbps!.toPrecision(3));
});
