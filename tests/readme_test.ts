/**
 * README.md's code blocks do what the text beside them says, pasted into a
 * shell on namespace hosts, with the `vdeno` that `deno task install` makes.
 *
 * A comment right before a block (blank lines between are fine) says what to
 * do with it:
 *
 * - `<!-- readme-test: run on host N -->`: a shell block, run by `bash -e` as
 *   root in host N of one LAN of four, in README order, with `vdeno` on PATH;
 *   it must exit 0. `/etc/vdeno` stands for a fresh directory of the test's.
 * - `<!-- readme-test: library -->`: the TypeScript snippet, run with
 *   `--allow-net --allow-ffi` in host 3 while the shell blocks run (its
 *   `./mod.ts` import becomes this checkout's mod.ts, imported from another
 *   directory); it must print one `N bytes from MAC` line and end.
 * - `<!-- readme-test: transcript -->`: `$ command` lines, each followed by
 *   the output it prints (`...` stands for anything), run in host 4; a line
 *   whose comment says "as a user" runs as nobody with USER=alice.
 * - `<!-- readme-test: skip: WHY -->`: not run here, for the reason given.
 *
 * Blocks without a comment are not run and are listed on stderr, so that a
 * new section does not fail this test; the tutorial's blocks must be marked
 * to run (the test fails when one is not).
 */

import assert from "node:assert/strict";
import { hostTest, Lan, type Process, requirements, run } from "./_harness.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A fenced code block of the README and the marker before it. */
interface Block {
  line: number;
  info: string;
  text: string;
  marker?: string;
}

/** The fenced blocks of a Markdown text, each with the readme-test marker before it, if any. */
export function readmeBlocks(markdown: string): Block[] {
  const lines = markdown.split("\n");
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const fence = /^```(\S*)\s*$/.exec(lines[i]);
    if (!fence) continue;
    const end = lines.findIndex((line, j) => j > i && line.startsWith("```"));
    assert.ok(end > i, `README.md:${i + 1}: a code block that never closes`);
    let before = i - 1;
    while (before >= 0 && lines[before].trim() === "") before--;
    const marker = /^<!-- readme-test: (.*?) -->$/.exec(lines[before] ?? "")?.[1];
    blocks.push({ line: i + 1, info: fence[1], text: lines.slice(i + 1, end).join("\n"), marker });
    i = end;
  }
  return blocks;
}

/** Blocks that must be marked to run: the tutorial a newcomer follows first. */
const TUTORIAL = [
  { what: "the tutorial's TAP plug", contains: "vdeno plug -d tap://tap0 vxvde://234.0.0.1" },
  { what: "the vdeno ns example", contains: "vdeno ns vxvde://234.0.0.1 -- sh -c" },
  { what: "the keyed network example", contains: "vdeno keygen /etc/vdeno/lan.key" },
  { what: "the library snippet", contains: "openVde(" },
  { what: "the error example", contains: "colour=red" },
];

const README = Deno.readTextFileSync(`${ROOT}README.md`);

Deno.test("every README block's marker is one the test knows, and the tutorial is marked to run", () => {
  const blocks = readmeBlocks(README);
  for (const block of blocks) {
    if (block.marker === undefined) continue;
    assert.match(
      block.marker,
      /^(run on host [1-4]|library|transcript|skip: .+)$/,
      `README.md:${block.line}: unknown readme-test marker ${JSON.stringify(block.marker)}`,
    );
  }
  for (const { what, contains } of TUTORIAL) {
    const block = blocks.find((candidate) => candidate.text.includes(contains));
    assert.ok(block, `README.md has no block with ${JSON.stringify(contains)} (${what})`);
    assert.ok(
      block.marker !== undefined && !block.marker.startsWith("skip"),
      `README.md:${block.line}: ${what} is not marked to run (marker: ${block.marker ?? "none"})`,
    );
  }
  const unmarked = blocks.filter((block) => block.marker === undefined);
  if (unmarked.length > 0) {
    console.error(
      `README.md blocks not run by tests/readme_test.ts (unmarked): ${
        unmarked.map((block) => `line ${block.line}`).join(", ")
      }`,
    );
  }
});

Deno.test("deno task passes its -- on, and vdeno accepts it: deno task demo -- --keep works", async () => {
  for (const args of [["demo", "--", "--help"], ["vdeno", "--", "randmac", "--"]]) {
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["task", "--quiet", ...args],
      cwd: ROOT,
      stdin: "null",
    }).output();
    const output = new TextDecoder().decode(result.stdout);
    assert.equal(
      result.code,
      0,
      `deno task ${args.join(" ")}: ${new TextDecoder().decode(result.stderr)}`,
    );
    assert.match(
      output,
      args[0] === "demo" ? /^Usage: vdeno demo/ : /^[0-9a-f]{2}(:[0-9a-f]{2}){5}\n$/,
    );
  }
});

/** The expected output of a transcript line as a pattern: `...` matches anything. */
function outputPattern(expected: string): RegExp {
  const parts = expected.split("...").map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${parts.join(".*")}$`, "s");
}

hostTest(
  "the README's tutorial, keyed network, library and error examples do what the text says",
  requirements(["ping", "unshare", "setpriv"]),
  async () => {
    const blocks = readmeBlocks(README);
    const work = await Deno.makeTempDir({ prefix: "vdeno-readme-" });
    try {
      // Everything a block or nobody touches: readable by nobody, written only where it must.
      await Deno.chmod(work, 0o755);
      const prefix = `${work}/prefix`;
      const installed = await run([
        Deno.execPath(),
        "run",
        "-A",
        `${ROOT}tools/install.ts`,
        "--prefix",
        prefix,
      ], { timeoutMs: 300_000 });
      assert.equal(installed.code, 0, installed.stderr);
      await Deno.chmod(prefix, 0o755);
      await Deno.mkdir(`${work}/runtime`, { mode: 0o700 });
      await Deno.mkdir(`${work}/deno`, { mode: 0o777 });
      await Deno.chmod(`${work}/deno`, 0o777);
      const env = [
        `PATH=${prefix}/bin:${Deno.env.get("PATH")}`,
        `XDG_RUNTIME_DIR=${work}/runtime`,
      ];
      const adapt = (text: string) => text.replaceAll("/etc/vdeno/", `${work}/etc/vdeno/`);

      await using lan = await Lan.create(4);
      let library: Process | undefined;
      const snippet = blocks.find((block) => block.marker === "library");
      if (snippet) {
        const mod = `${ROOT}mod.ts`;
        const file = `${work}/hello.ts`;
        await Deno.writeTextFile(file, snippet.text.replace(`"./mod.ts"`, JSON.stringify(mod)));
        library = lan.hosts[2].spawn([
          Deno.execPath(),
          "run",
          "--allow-net",
          "--allow-ffi",
          "--quiet",
          file,
        ]);
      }

      for (const block of blocks) {
        const marker = block.marker ?? "";
        const host = /^run on host (\d)$/.exec(marker);
        if (host) {
          const result = await lan.hosts[Number(host[1]) - 1].run(
            ["env", ...env, "bash", "-e", "-c", adapt(block.text)],
            { timeoutMs: 60_000 },
          );
          assert.equal(
            result.code,
            0,
            `README.md:${block.line} failed (${result.code}):\n${block.text}\n` +
              `stdout: ${result.stdout}\nstderr: ${result.stderr}`,
          );
        } else if (marker === "transcript") {
          const steps = block.text.split(/^\$ /m).filter(Boolean);
          for (const step of steps) {
            const [commandLine, ...output] = step.replace(/\n$/, "").split("\n");
            const [command, comment = ""] = commandLine.split(/\s+# /);
            const asUser = comment.includes("as a user")
              ? [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "env",
                "USER=alice",
                `HOME=${work}`,
                `DENO_DIR=${work}/deno`,
              ]
              : [];
            const result = await lan.hosts[3].run(
              [...asUser, "env", ...env, "bash", "-c", adapt(command)],
              { timeoutMs: 60_000 },
            );
            const printed = (result.stdout + result.stderr).replace(/\n$/, "");
            assert.match(
              printed,
              outputPattern(output.join("\n")),
              `README.md:${block.line}: $ ${commandLine}`,
            );
            assert.notEqual(result.code, 0, `README.md:${block.line}: an error exits non-zero`);
          }
        }
      }

      // keygen made the missing directory private and the key its owner's alone.
      assert.equal((await Deno.stat(`${work}/etc/vdeno`)).mode! & 0o777, 0o700);
      assert.equal((await Deno.stat(`${work}/etc/vdeno/lan.key`)).mode! & 0o777, 0o600);

      if (library) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        try {
          const { code } = await Promise.race([
            library.exited(),
            new Promise<never>((_, reject) => {
              timer = setTimeout(
                () => reject(new Error("the library snippet got no frame")),
                30_000,
              );
            }),
          ]);
          assert.equal(code, 0, library.stderr);
        } finally {
          clearTimeout(timer);
        }
        assert.match(library.stdout, /^\d+ bytes from [0-9a-f]{2}(:[0-9a-f]{2}){5}\n$/);
      }
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
);
