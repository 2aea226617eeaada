/** app/control.ts: the control socket of a running cable, without root. */

import assert from "node:assert/strict";
import {
  cableReport,
  ControlServer,
  controlSockets,
  queryStatus,
  type StatusReport,
} from "../app/control.ts";
import { runCable } from "../core/cable.ts";
import { MemoryPlug, numberedFrame } from "./_memory_plug.ts";

/** Runs `body` with the control directory in a fresh temporary runtime directory. */
async function inRuntimeDirectory(
  body: (directory: string) => Promise<void> | void,
): Promise<void> {
  const runtime = Deno.makeTempDirSync();
  const before = Deno.env.get("XDG_RUNTIME_DIR");
  Deno.env.set("XDG_RUNTIME_DIR", runtime);
  try {
    await body(`${runtime}/vdeno`);
  } finally {
    if (before === undefined) Deno.env.delete("XDG_RUNTIME_DIR");
    else Deno.env.set("XDG_RUNTIME_DIR", before);
    Deno.removeSync(runtime, { recursive: true });
  }
}

function report(name: string, plugs: MemoryPlug[]): () => StatusReport {
  const startedAt = new Date();
  return () => cableReport(name, startedAt, plugs);
}

Deno.test("a cable serves its control socket between frames, with the plugs' counters", async () => {
  await inRuntimeDirectory(async (directory) => {
    using a = new MemoryPlug("memory://a");
    using b = new MemoryPlug("memory://b");
    const server = ControlServer.start("cable", report("cable", [a, b]));
    try {
      assert.equal(server.path, `${directory}/cable.sock`);
      assert.equal(Deno.statSync(directory).mode! & 0o777, 0o700);
      assert.equal(Deno.statSync(server.path).mode! & 0o777, 0o600);
      a.inject(numberedFrame(1), numberedFrame(2));
      // The client is queued on the listening socket before the cable runs.
      const client = await Deno.connect({ transport: "unix", path: server.path });
      const end = runCable(a, b, {
        watch: {
          fds: [server.fd],
          onReady: () => {
            server.serve();
            return false;
          },
        },
      });
      assert.deepEqual(end, { kind: "stopped" });
      const answer = JSON.parse(await new Response(client.readable).text()) as StatusReport;
      assert.equal(answer.name, "cable");
      assert.deepEqual(answer.plugs.map((plug) => plug.vnl), ["memory://a", "memory://b"]);
      assert.equal(answer.plugs[0].counters.framesIn, 2);
      assert.equal(answer.plugs[1].counters.framesOut, 2);
      assert.deepEqual(controlSockets(), [{ name: "cable", path: server.path }]);
    } finally {
      server.close();
    }
    assert.deepEqual(controlSockets(), [], "closing removes the socket");
  });
});

Deno.test("the control socket answers a report per client, and queryStatus reads it", async () => {
  await inRuntimeDirectory(async () => {
    const server = ControlServer.start("query", report("query", []));
    try {
      let answered = 0;
      const answers = [queryStatus(server.path), queryStatus(server.path)].map((answer) =>
        answer.finally(() => answered++)
      );
      // Serve whoever is waiting, as the cable does when the socket is readable.
      const deadline = Date.now() + 10_000;
      while (answered < 2 && Date.now() < deadline) {
        server.serve();
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      for (const answer of await Promise.all(answers)) assert.equal(answer.name, "query");
    } finally {
      server.close();
    }
  });
});

Deno.test("a second plug of the same name is refused, and so is a name that is not a file name", async () => {
  await inRuntimeDirectory(() => {
    const server = ControlServer.start("twice", report("twice", []));
    try {
      assert.throws(
        () => ControlServer.start("twice", report("twice", [])),
        /A plug named twice is already running/,
      );
    } finally {
      server.close();
    }
    assert.throws(() => ControlServer.start("../x", report("x", [])), /Bad plug name/);
  });
});
