/**
 * Fails when an import goes up the layers, reaches into another folder's
 * private `_name.ts` module, or closes a cycle, and when a module outside
 * `ffi/` calls a libc symbol itself. The layers, lowest first:
 * `ffi/` (the libc boundary), `core/` (frames, the plug interface, the
 * cable), `plugs/` (one module per VNL scheme), `app/` (commands, control
 * socket, data-plane threads), then `main.ts` and `mod.ts`. A module may
 * import from its own layer or below. tests/, bench/ and tools/ stand outside
 * and may import anything.
 *
 * Run by `deno task check`; `deno run --allow-read tools/check_layers.ts`.
 *
 * @module
 */

/** The layers in order: a module may import from its own layer or an earlier one. */
export const LAYERS = ["ffi", "core", "plugs", "app", "top"] as const;

/** The layer of a path relative to the repository root, or undefined outside the layers. */
export function layerOf(path: string): number | undefined {
  if (path === "main.ts" || path === "mod.ts") return LAYERS.indexOf("top");
  const index = LAYERS.indexOf(path.split("/")[0] as typeof LAYERS[number]);
  return index < 0 || index === LAYERS.indexOf("top") ? undefined : index;
}

function folderOf(path: string): string {
  return path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
}

/** Joins a relative specifier to the folder of the importing module. */
export function resolve(from: string, specifier: string): string {
  const parts = folderOf(from).split("/").filter(Boolean);
  for (const part of specifier.split("/")) {
    if (part === "..") parts.pop();
    else if (part !== ".") parts.push(part);
  }
  return parts.join("/");
}

/** The relative module specifiers a source text imports, statically or dynamically. */
export function importsOf(source: string): string[] {
  const found: string[] = [];
  // Examples in doc comments import too; they are not edges of the graph.
  source = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const pattern = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)["'](\.{1,2}\/[^"']+\.ts)["']/gm;
  for (const match of source.matchAll(pattern)) found.push(match[1]);
  return found;
}

/** What is wrong with a module graph (path -> the paths it imports), one line a problem. */
export function layerProblems(graph: Map<string, string[]>): string[] {
  const problems: string[] = [];
  for (const [from, targets] of graph) {
    const fromLayer = layerOf(from);
    if (fromLayer === undefined) continue;
    for (const to of targets) {
      const toLayer = layerOf(to);
      if (toLayer === undefined) {
        problems.push(`${from} imports ${to}, which is outside the layers`);
      } else if (toLayer > fromLayer) {
        problems.push(
          `${from} imports ${to}: ${LAYERS[fromLayer]}/ may not import from ${LAYERS[toLayer]}/`,
        );
      }
      const name = to.slice(to.lastIndexOf("/") + 1);
      if (name.startsWith("_") && folderOf(to) !== folderOf(from)) {
        problems.push(`${from} imports ${to}, which is private to ${folderOf(to)}/`);
      }
    }
  }
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (node: string) => {
    if (state.get(node) === "done") return;
    if (state.get(node) === "open") {
      problems.push(`import cycle: ${[...stack.slice(stack.indexOf(node)), node].join(" -> ")}`);
      return;
    }
    state.set(node, "open");
    stack.push(node);
    for (const next of graph.get(node) ?? []) visit(next);
    stack.pop();
    state.set(node, "done");
  };
  for (const node of [...graph.keys()].sort()) visit(node);
  return problems;
}

/** Lines of a module outside ffi/ that call a libc symbol directly, as "path:line: call". */
export function libcCallsOutsideFfi(path: string, source: string): string[] {
  if (path.startsWith("ffi/") || layerOf(path) === undefined) return [];
  const found: string[] = [];
  source.split("\n").forEach((line, i) => {
    const call = /\blibc\.([a-z_0-9]+)\s*\(/.exec(line.replace(/\/\/.*$/, ""));
    if (call) found.push(`${path}:${i + 1} calls libc.${call[1]}; wrap it in ffi/`);
  });
  return found;
}

function walk(folder: string, into: string[]): void {
  for (const entry of Deno.readDirSync(folder)) {
    const path = `${folder}/${entry.name}`;
    if (entry.isDirectory) walk(path, into);
    else if (entry.name.endsWith(".ts")) into.push(path);
  }
}

/** Reads the layered modules of the repository at `root` into a graph. */
export function readGraph(root: string): Map<string, string[]> {
  const files: string[] = [];
  for (const folder of LAYERS.slice(0, -1)) walk(`${root}/${folder}`, files);
  files.push(`${root}/main.ts`, `${root}/mod.ts`);
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const path = file.slice(root.length + 1);
    graph.set(path, importsOf(Deno.readTextFileSync(file)).map((s) => resolve(path, s)));
  }
  return graph;
}

if (import.meta.main) {
  const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const graph = readGraph(root);
  const problems = layerProblems(graph);
  for (const path of graph.keys()) {
    problems.push(...libcCallsOutsideFfi(path, Deno.readTextFileSync(`${root}/${path}`)));
  }
  for (const problem of problems) console.error(`check_layers: ${problem}`);
  if (problems.length > 0) Deno.exit(1);
  console.log(
    "check_layers: imports go one way (app -> plugs -> core -> ffi), no cycles, libc only in ffi/",
  );
}
