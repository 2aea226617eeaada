/**
 * The benchmark runs end to end: `bench/run.ts --quick --rounds 1` builds its
 * LAN, measures every contender (the namespace ones, `vdeno ns` and vdens,
 * included) and writes a JSON report holding every figure for every contender
 * and every ratio between them, in a temporary directory (a quick run never replaces
 * the committed results). Only that values are plausible is checked, never how
 * fast anything is.
 */

import assert from "node:assert/strict";
import type { Report } from "../bench/_report.ts";
import { hostTest, run } from "./_harness.ts";

const RUN_TS = new URL("../bench/run.ts", import.meta.url).pathname;
const RESULTS = new URL("../bench/results", import.meta.url).pathname;
const COMMITTED = `${RESULTS}/latest.json`;

/** Figures that may legitimately be zero (a run without retransmissions). */
const MAY_BE_ZERO = new Set(["tcp1_retransmits", "tcp4_retransmits"]);

hostTest("deno task bench --quick measures every figure of every contender", [
  "vde_plug",
  "vdens",
  "nsenter",
  "iperf3",
  "ping",
], async () => {
  const committed = await Deno.readTextFile(COMMITTED);
  let out: string | undefined;
  try {
    // No --out: a quick run writes to a temporary directory of its own and says which.
    const result = await run(
      [Deno.execPath(), "run", "--allow-all", RUN_TS, "--quick", "--rounds", "1"],
      { timeoutMs: 420_000 },
    );
    out = /^Results written to (\S+)$/m.exec(result.stdout)?.[1];
    assert.equal(result.code, 0, `bench/run.ts failed:\n${result.stderr}`);
    for (const column of ["vdeno / vde_plug", "vdeno / kernel", "vdeno-ns / vdens"]) {
      assert.ok(result.stdout.includes(` ${column} |`), `the table has the column ${column}`);
    }
    assert.match(result.stdout, /^Quick figures are rough/m);
    assert.ok(out && !out.startsWith(RESULTS), `a quick run wrote to ${out}`);
    assert.equal(
      await Deno.readTextFile(COMMITTED),
      committed,
      "the committed results are untouched",
    );

    const report: Report = JSON.parse(await Deno.readTextFile(`${out}/latest.json`));
    assert.deepEqual(report.options.contenders, [
      "vdeno",
      "vdeno-sealed",
      "vde_plug",
      "kernel",
      "vdeno-ns",
      "vdens",
    ]);
    for (const contender of report.options.contenders) {
      for (const figure of report.figures) {
        const summary = report.results[contender]?.[figure.key];
        assert.ok(summary, `${contender} has no ${figure.key}`);
        if (contender === "kernel" && figure.perProcess) {
          assert.equal(summary.median, null, `kernel has no process for ${figure.key}`);
          continue;
        }
        const value = summary.median;
        assert.ok(
          value !== null && Number.isFinite(value) &&
            (MAY_BE_ZERO.has(figure.key) ? value >= 0 : value > 0),
          `${contender} ${figure.key} is not plausible: ${value}`,
        );
      }
    }
    assert.deepEqual(Object.keys(report.ratios), [
      "vdeno / vde_plug",
      "vdeno / kernel",
      "vdeno-sealed / vdeno",
      "vdeno-ns / vdens",
    ]);
    for (const [name, ratios] of Object.entries(report.ratios)) {
      const [ours, theirs] = name.split(" / ");
      for (const figure of report.figures) {
        const a = report.results[ours][figure.key].median;
        const b = report.results[theirs][figure.key].median;
        const expected = a !== null && b !== null && b !== 0 ? a / b : null;
        assert.equal(ratios[figure.key], expected, `${name} of ${figure.key}`);
      }
    }
    const svg = await Deno.readTextFile(`${out}/latest.svg`);
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.equal((svg.match(/<rect /g) ?? []).length > report.figures.length, true);
  } finally {
    if (out && !out.startsWith(RESULTS)) await Deno.remove(out, { recursive: true });
  }
});
