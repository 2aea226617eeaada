/**
 * The figures of the benchmark and their presentation: medians over rounds,
 * the ratios (vdeno / vde_plug, vdeno / kernel, vdeno-ns / vdens, ...), a text table, the JSON document and an SVG bar
 * chart (one panel per figure, since their units differ).
 *
 * @module
 */

import type { ContenderName } from "./_contenders.ts";

/** One figure the benchmark reports. */
export interface Figure {
  key: string;
  label: string;
  unit: string;
  /** Which way is better, for reading the ratio. */
  better: "higher" | "lower";
  /** Measured on plug processes: not applicable to the kernel's device. */
  perProcess?: boolean;
}

/** Every figure, in the order of the table. */
export const FIGURES: Figure[] = [
  { key: "tcp1_mbps", label: "TCP 1 stream", unit: "Mbit/s", better: "higher" },
  { key: "tcp1_retransmits", label: "TCP 1 stream retransmits", unit: "count", better: "lower" },
  { key: "tcp4_mbps", label: "TCP 4 streams", unit: "Mbit/s", better: "higher" },
  { key: "tcp4_retransmits", label: "TCP 4 streams retransmits", unit: "count", better: "lower" },
  { key: "udp64_fps", label: "UDP 64 B capacity", unit: "frames/s", better: "higher" },
  { key: "udp64_mbps", label: "UDP 64 B capacity", unit: "Mbit/s", better: "higher" },
  { key: "udp1400_fps", label: "UDP 1400 B capacity", unit: "frames/s", better: "higher" },
  { key: "udp1400_mbps", label: "UDP 1400 B capacity", unit: "Mbit/s", better: "higher" },
  { key: "rtt_idle_p50", label: "RTT p50, no load", unit: "ms", better: "lower" },
  { key: "rtt_idle_p99", label: "RTT p99, no load", unit: "ms", better: "lower" },
  { key: "rtt_fresh_p50", label: "RTT p50, fresh plug", unit: "ms", better: "lower" },
  { key: "rtt_fresh_p99", label: "RTT p99, fresh plug", unit: "ms", better: "lower" },
  { key: "rtt_load_p50", label: "RTT p50, TCP load", unit: "ms", better: "lower" },
  { key: "rtt_load_p99", label: "RTT p99, TCP load", unit: "ms", better: "lower" },
  {
    key: "cpu_s_per_gb",
    label: "CPU per GB carried",
    unit: "s/GB",
    better: "lower",
    perProcess: true,
  },
  {
    key: "rss_peak_mb",
    label: "Peak resident memory",
    unit: "MB",
    better: "lower",
    perProcess: true,
  },
];

/** Figures of one contender in one round, by figure key. */
export type RoundFigures = Record<string, number>;

/** A figure's median and its value in each round (null where not applicable). */
export interface Summary {
  median: number | null;
  rounds: number[];
}

/** The JSON document written to bench/results/latest.json. */
export interface Report {
  date: string;
  machine: {
    cpus: number;
    model: string;
    kernel: string;
    deno: string;
    loadavgBefore: number[];
    loadavgAfter: number[];
  };
  options: { rounds: number; quick: boolean; contenders: ContenderName[] };
  figures: Figure[];
  /** contender -> figure key -> summary. */
  results: Record<string, Record<string, Summary>>;
  /**
   * Ratio name ("vdeno / vde_plug", see {@linkcode RATIOS}) -> figure key -> the
   * first contender's median / the second's (null when either is missing or
   * zero). Only the ratios whose two contenders ran.
   */
  ratios: Record<string, Record<string, number | null>>;
  notes: string[];
}

/** The ratios a run reports when both of their contenders ran: [ours, theirs]. */
export const RATIOS: readonly (readonly [ContenderName, ContenderName])[] = [
  ["vdeno", "vde_plug"],
  ["vdeno", "kernel"],
  ["vdeno-sealed", "vdeno"],
  ["vdeno-ns", "vdens"],
  ["vdeno-vde", "vde_plug-vde"],
  ["vdeno-vlan", "vde_plug-vlan"],
];

/** A ratio's name, as the table's column and the JSON's key: "vdeno / vde_plug". */
export function ratioName([ours, theirs]: readonly [string, string]): string {
  return `${ours} / ${theirs}`;
}

/** The median of `values` (the mean of the middle two for an even count). */
export function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Medians per contender and figure, and the ratios between contenders that ran. */
export function summarize(
  rounds: Map<ContenderName, RoundFigures[]>,
): Pick<Report, "results" | "ratios"> {
  const results: Report["results"] = {};
  for (const [name, perRound] of rounds) {
    results[name] = {};
    for (const figure of FIGURES) {
      const values = perRound.map((r) => r[figure.key]).filter((v) => v !== undefined);
      results[name][figure.key] = { median: median(values), rounds: values };
    }
  }
  return { results, ratios: ratiosOf(results) };
}

/** Every ratio of {@linkcode RATIOS} whose two contenders are in `results`, per figure. */
export function ratiosOf(results: Report["results"]): Report["ratios"] {
  const ratios: Report["ratios"] = {};
  for (const [ours, theirs] of RATIOS) {
    if (!results[ours] || !results[theirs]) continue;
    const byFigure: Record<string, number | null> = {};
    for (const figure of FIGURES) {
      const a = results[ours][figure.key]?.median;
      const b = results[theirs][figure.key]?.median;
      byFigure[figure.key] = a != null && b != null && b !== 0 ? a / b : null;
    }
    ratios[ratioName([ours, theirs])] = byFigure;
  }
  return ratios;
}

/** A figure for the table: 3 significant digits, thousands grouped, "-" when missing. */
export function formatValue(value: number | null | undefined): string {
  if (value == null || !Number.isFinite(value)) return "-";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
  return Number(value.toPrecision(3)).toString();
}

/** The table printed at the end of a run (also valid Markdown). */
export function table(report: Report): string {
  const names = report.options.contenders;
  const ratios = Object.keys(report.ratios);
  const header = ["figure", "unit", ...names, ...ratios];
  const rows = FIGURES.map((figure) => [
    figure.label,
    figure.unit,
    ...names.map((name) => formatValue(report.results[name]?.[figure.key]?.median)),
    ...ratios.map((ratio) => formatValue(report.ratios[ratio][figure.key])),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) =>
    `| ${
      cells.map((cell, i) => i < 2 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join(" | ")
    } |`;
  const rule = `| ${
    widths.map((w, i) => i < 2 ? "-".repeat(w) : "-".repeat(w - 1) + ":").join(" | ")
  } |`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}

const COLORS: Record<string, string> = {
  vdeno: "#2a7ab0",
  "vdeno-sealed": "#6aa9d6",
  vde_plug: "#d9822b",
  kernel: "#8a8a8a",
  "vdeno-ns": "#1b4f72",
  vdens: "#a0561a",
  "vdeno-vde": "#2a7ab0",
  "vde_plug-vde": "#d9822b",
  "vdeno-vlan": "#2a7ab0",
  "vde_plug-vlan": "#d9822b",
};

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/**
 * A bar chart: one panel per figure, one bar per contender scaled to the
 * largest median of that figure, the value written above each bar.
 */
export function svgChart(report: Report): string {
  const names = report.options.contenders;
  const columns = 4;
  const panelWidth = 230;
  const panelHeight = 185;
  const barArea = 110;
  const top = 70;
  const rowsOfPanels = Math.ceil(FIGURES.length / columns);
  const width = columns * panelWidth + 20;
  const height = top + rowsOfPanels * panelHeight + 10;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">vdeno benchmark: medians of ${report.options.rounds} round(s)${
      report.options.quick ? " (quick)" : ""
    }</text>`,
    `<text x="10" y="38">${
      escapeXml(`${report.date}, ${report.machine.cpus} CPUs, ${report.machine.model}`)
    }</text>`,
  ];
  names.forEach((name, i) => {
    const x = 10 + i * 110;
    parts.push(`<rect x="${x}" y="48" width="12" height="12" fill="${COLORS[name]}"/>`);
    parts.push(`<text x="${x + 16}" y="58">${name}</text>`);
  });
  FIGURES.forEach((figure, index) => {
    const panelX = 10 + (index % columns) * panelWidth;
    const panelY = top + Math.floor(index / columns) * panelHeight;
    const medians = names.map((name) => report.results[name]?.[figure.key]?.median ?? null);
    const largest = Math.max(0, ...medians.filter((m): m is number => m !== null));
    parts.push(
      `<text x="${panelX + 5}" y="${panelY + 14}" font-weight="bold">${
        escapeXml(figure.label)
      }</text>`,
      `<text x="${panelX + 5}" y="${panelY + 28}" fill="#555">${
        escapeXml(`${figure.unit}, ${figure.better} is better`)
      }</text>`,
    );
    const baseline = panelY + 36 + barArea + 8;
    parts.push(
      `<line x1="${panelX + 5}" y1="${baseline}" x2="${
        panelX + panelWidth - 15
      }" y2="${baseline}" stroke="#444"/>`,
    );
    const barWidth = Math.min(50, (panelWidth - 30) / names.length - 10);
    medians.forEach((value, i) => {
      const x = panelX + 15 + i * (barWidth + 10);
      const barHeight = value !== null && largest > 0
        ? Math.round((value / largest) * barArea * 10) / 10
        : 0;
      const barTop = (baseline - barHeight).toFixed(1);
      if (value !== null) {
        parts.push(
          `<rect x="${x}" y="${barTop}" width="${barWidth}" height="${barHeight}" fill="${
            COLORS[names[i]]
          }"/>`,
        );
      }
      parts.push(
        `<text x="${x + barWidth / 2}" y="${
          (baseline - barHeight - 3).toFixed(1)
        }" text-anchor="middle">${value === null ? "n/a" : formatValue(value)}</text>`,
      );
    });
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

/** The README's benchmark table sits between these two lines; `deno task bench` rewrites it. */
export const README_TABLE_BEGIN = "<!-- bench table: made by bench/_report.ts from latest.json -->";
export const README_TABLE_END = "<!-- end of bench table -->";

/** A column of a README table: a contender and its heading. */
type Column = readonly [ContenderName, string];

/**
 * The README's tables: vdeno, vde_plug and the kernel with the ratios vdeno /
 * vde_plug and vdeno / kernel; then, when the run had them, `vdeno ns` and
 * vdens with theirs. Paired figures share one cell.
 */
export function readmeTable(report: Report): string {
  const tables = [
    pairedTable(
      report,
      [["vdeno", "vdeno"], ["vde_plug", "vde_plug"], ["kernel", "kernel VXLAN"]],
      [
        ["vdeno", "vde_plug"],
        ["vdeno", "kernel"],
      ],
    ),
  ];
  if (report.results["vdeno-ns"] && report.results.vdens) {
    tables.push(
      pairedTable(report, [["vdeno-ns", "vdeno ns"], ["vdens", "vdens"]], [["vdeno-ns", "vdens"]]),
    );
  }
  return tables.join("\n\n");
}

function pairedTable(
  report: Report,
  columns: Column[],
  pairs: (readonly [ContenderName, ContenderName])[],
): string {
  const median = (name: string, key: string) => report.results[name]?.[key]?.median ?? null;
  const ms = (value: number | null) => value == null ? "-" : value.toFixed(2);
  const ratio = (pair: readonly [string, string], key: string) => {
    const value = report.ratios[ratioName(pair)]?.[key];
    return value == null || !Number.isFinite(value) ? "-" : value.toPrecision(3);
  };
  const rows: {
    label: string;
    cell: (name: string) => string;
    ratio: (pair: readonly [string, string]) => string;
  }[] = [
    ...(["tcp1", "tcp4"] as const).map((test) => ({
      label: `TCP ${test === "tcp1" ? "1 stream" : "4 streams"}, Mbit/s (retrans.)`,
      cell: (name: string) =>
        `${formatValue(median(name, `${test}_mbps`))} (${
          formatValue(median(name, `${test}_retransmits`))
        })`,
      ratio: (pair: readonly [string, string]) => ratio(pair, `${test}_mbps`),
    })),
    ...(["64", "1400"] as const).map((size) => ({
      label: `UDP capacity at ${size} B, frames/s`,
      cell: (name: string) => formatValue(median(name, `udp${size}_fps`)),
      ratio: (pair: readonly [string, string]) => ratio(pair, `udp${size}_fps`),
    })),
    ...([["idle", " at no load"], ["fresh", ", fresh plug"]] as const).map(([when, label]) => ({
      label: `RTT p50 / p99${label}, ms`,
      cell: (name: string) =>
        `${ms(median(name, `rtt_${when}_p50`))} / ${ms(median(name, `rtt_${when}_p99`))}`,
      ratio: (pair: readonly [string, string]) =>
        `${ratio(pair, `rtt_${when}_p50`)} / ${ratio(pair, `rtt_${when}_p99`)}`,
    })),
    {
      label: "CPU per GB carried, s",
      cell: (name) => formatValue(median(name, "cpu_s_per_gb")),
      ratio: (pair) => ratio(pair, "cpu_s_per_gb"),
    },
    {
      label: "peak resident memory, MB",
      cell: (name) => formatValue(median(name, "rss_peak_mb")),
      ratio: () => "",
    },
  ];
  const header = ["figure", ...columns.map(([, heading]) => heading), ...pairs.map(ratioName)];
  const cells = rows.map((row) => [
    row.label,
    ...columns.map(([name]) => row.cell(name)),
    ...pairs.map(row.ratio),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((row) => row[i].length)));
  const line = (row: string[]) =>
    `| ${
      row.map((cell, i) => i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join(" | ")
    } |`;
  const rule = `| ${
    widths.map((w, i) => i === 0 ? "-".repeat(w) : "-".repeat(w - 1) + ":").join(" | ")
  } |`;
  return [line(header), rule, ...cells.map(line)].join("\n");
}

/** `readme` with the text between the table's markers replaced by {@linkcode readmeTable}. */
export function withReadmeTable(readme: string, report: Report): string {
  const begin = readme.indexOf(README_TABLE_BEGIN);
  const end = readme.indexOf(README_TABLE_END);
  if (begin < 0 || end < begin) {
    throw new Error(`README.md has no benchmark table markers (${README_TABLE_BEGIN})`);
  }
  return readme.slice(0, begin + README_TABLE_BEGIN.length) + "\n\n" + readmeTable(report) +
    "\n\n" + readme.slice(end);
}
