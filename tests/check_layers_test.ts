import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert/strict";
import {
  importsOf,
  layerProblems,
  libcCallsOutsideFfi,
  readGraph,
  resolve,
} from "../tools/check_layers.ts";

const graph = (edges: Record<string, string[]>) => new Map(Object.entries(edges));

Deno.test("the repository's imports go one way and close no cycle", () => {
  const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  assertEquals(layerProblems(readGraph(root)), []);
});

Deno.test("an upward import is a problem that names both modules and layers", () => {
  const problems = layerProblems(graph({ "core/cable.ts": ["plugs/tap.ts"], "plugs/tap.ts": [] }));
  assertEquals(problems, ["core/cable.ts imports plugs/tap.ts: core/ may not import from plugs/"]);
});

Deno.test("imports within a layer and downward pass", () => {
  const problems = layerProblems(graph({
    "app/cli/plug.ts": ["plugs/open.ts", "core/cable.ts", "ffi/libc.ts"],
    "plugs/open.ts": ["plugs/tap.ts"],
    "plugs/tap.ts": ["plugs/_offload.ts", "core/frames.ts"],
  }));
  assertEquals(problems, []);
});

Deno.test("a cycle inside one layer is found", () => {
  const problems = layerProblems(graph({
    "plugs/open.ts": ["plugs/agno.ts"],
    "plugs/agno.ts": ["plugs/open.ts"],
  }));
  assertEquals(problems.length, 1);
  assertMatch(problems[0], /^import cycle: plugs\/agno\.ts -> plugs\/open\.ts -> plugs\/agno\.ts$/);
});

Deno.test("a private module is private to its folder", () => {
  const problems = layerProblems(graph({ "app/cli/keygen.ts": ["plugs/_mactable.ts"] }));
  assertEquals(problems, [
    "app/cli/keygen.ts imports plugs/_mactable.ts, which is private to plugs/",
  ]);
});

Deno.test("imports are read from code, not from doc comments", () => {
  const source =
    `/**\n * import { openVde } from "./mod.ts";\n */\nimport { a } from "./core/a.ts";\n` +
    `import type { B } from "../b.ts";\nconst c = await import("./c.ts");\n// import "./d.ts";\n`;
  assertEquals(importsOf(source), ["./core/a.ts", "../b.ts", "./c.ts"]);
  assertEquals(resolve("app/cli/plug.ts", "../../core/cable.ts"), "core/cable.ts");
});

Deno.test("a libc call outside ffi/ is found, one inside ffi/ or in a comment is not", () => {
  const source = "const n = libc.read(fd, p, 4n);\n// libc.write(fd) in a comment\n";
  assertEquals(libcCallsOutsideFfi("plugs/tap.ts", source), [
    "plugs/tap.ts:1 calls libc.read; wrap it in ffi/",
  ]);
  assertEquals(libcCallsOutsideFfi("ffi/io.ts", source), []);
  assertEquals(libcCallsOutsideFfi("tests/x_test.ts", source), []);
});
