/**
 * Keyed vxvde networks (`key=`): the replay window and the sealer on their
 * own, key files, and real plugs on namespace hosts: keyed plugs talk, plugs
 * without the key (vdeno or vde_plug) and with another key get nothing
 * through either way, replays are dropped and counted, and the wire carries
 * no plaintext.
 */

import assert from "node:assert/strict";
import { FrameBatch, HEADROOM, MAX_FRAME } from "../core/frames.ts";
import { SOCKADDR_SIZE, SocketAddress } from "../ffi/net.ts";
import {
  destinationTag,
  loadKey,
  newKeyText,
  readKeyFile,
  ReplayWindow,
  SEALED_PREFIX,
  sealedHeader,
  Sealer,
  Verdict,
  WINDOW_SIZE,
} from "../plugs/seal.ts";
import { MISMATCH_WARNING_SECONDS } from "../plugs/vxvde.ts";
import { type Host, hostTest, Lan, run, VDENO } from "./_harness.ts";

const REPLAY = new URL("./fixtures/udp_replay.ts", import.meta.url).pathname;

Deno.test("replay window: new, duplicate, reordered within the window, too old, new epoch", () => {
  const window = new ReplayWindow();
  const see = (high: number, low: number) => {
    if (!window.fresh(high, low)) return false;
    window.accept(high, low, 0);
    return true;
  };
  assert.equal(see(7, 100), true);
  assert.equal(see(7, 100), false, "a duplicate");
  assert.equal(see(7, 102), true);
  assert.equal(see(7, 101), true, "late but inside the window");
  assert.equal(see(7, 101), false);
  assert.equal(see(7, 100 + WINDOW_SIZE + 50), true, "a jump ahead");
  assert.equal(see(7, 102), false, "now below the window");
  assert.equal(see(7, 100 + 60), true, "still inside the window after the jump, never seen");
  assert.equal(see(7, 100 + WINDOW_SIZE + 49), true);
  assert.equal(see(7, 100 + WINDOW_SIZE + 10_000), true, "a jump beyond the whole ring");
  assert.equal(see(7, 100 + WINDOW_SIZE + 50), false, "forgotten by the jump: too old");
  assert.equal(see(6, 5_000_000), false, "an older epoch");
  assert.equal(see(8, 0), true, "a newer epoch");
  assert.equal(see(8, 0), false);
  for (let low = 1; low < 3000; low++) assert.equal(see(8, low), true, `in order ${low}`);
  for (let low = 0; low < 3000; low++) assert.equal(window.fresh(8, low), false, `seen ${low}`);
  // Runs of datagrams delivered tens of thousands apart out of order (another CPU's backlog
  // first): a late one is fresh up to WINDOW_SIZE behind the highest seen.
  assert.ok(WINDOW_SIZE >= 32_000, "the window holds 32,000 sequence numbers");
  const top = 100_000;
  for (let low = top - 3_000; low <= top; low++) assert.equal(see(8, low), true);
  for (let low = top - WINDOW_SIZE + 1; low < top - 3_000; low += 7) {
    assert.equal(see(8, low), true, `late by ${top - low}`);
  }
  for (let low = top - WINDOW_SIZE + 1; low <= top; low += 7) {
    assert.equal(see(8, low), false, `again ${low}`);
  }
  assert.equal(see(8, top - WINDOW_SIZE), false, "never seen, but a window behind: too old");
});

const SECRET = new Uint8Array(32).fill(7);
const GROUP = SocketAddress.parse("239.1.1.1", 14789)!;
const PLACE = { vni: 42, group: GROUP.bytes };

/** A sealer at 127.0.0.1:`port` on a simulated network, for the unit tests below. */
class Member {
  readonly sealer: Sealer;
  readonly address: SocketAddress;
  constructor(port: number, secret = SECRET, place = PLACE) {
    this.sealer = new Sealer(secret, place);
    this.sealer.setLocalPort(port);
    this.address = SocketAddress.parse("127.0.0.1", port)!;
  }
}

/** Seals `frame` (or a goodbye) with `sealer` for `to` (the group by default); returns the datagram. */
function sealFrame(sealer: Sealer, frame: Uint8Array, to?: SocketAddress): Uint8Array {
  const batch = new FrameBatch(1);
  batch.push(frame);
  batch.bytes.set(sealedHeader(42), HEADROOM - SEALED_PREFIX);
  const tag = to ? destinationTag(to.bytes, 0) : sealer.groupTag;
  assert.ok(sealer.seal(batch, 0, frame.length, Date.now() / 1000, tag));
  return batch.bytes.slice(HEADROOM - SEALED_PREFIX, HEADROOM + frame.length);
}

/** Opens a datagram that came from `from`, on the group's socket or the unicast one. */
function openDatagram(
  member: Member,
  datagram: Uint8Array,
  from: SocketAddress,
  fromGroup: boolean,
) {
  const batch = new FrameBatch(1);
  batch.bytes.set(datagram, HEADROOM - SEALED_PREFIX);
  const length = datagram.length - SEALED_PREFIX;
  const names = new Uint8Array(SOCKADDR_SIZE);
  names.set(from.bytes.subarray(0, SOCKADDR_SIZE));
  const verdict = member.sealer.open(batch, 0, length, Date.now() / 1000, {
    names,
    offset: 0,
    fromGroup,
  });
  return { verdict, frame: batch.bytes.slice(HEADROOM, HEADROOM + length) };
}

/** Delivers every queued hello, proof and announcement among `members` until none is left. */
function exchange(members: Member[]): number {
  let delivered = 0;
  for (let round = 0; round < 10; round++) {
    let moved = false;
    for (const from of members) {
      for (const { datagram, to } of from.sealer.takeOutgoing()) {
        moved = true;
        for (const member of members) {
          if (member === from) continue;
          if (to && !member.address.bytes.subarray(0, 8).every((b, k) => b === to[k])) continue;
          openDatagram(member, datagram, from.address, to === undefined);
          delivered++;
        }
      }
    }
    if (!moved) break;
  }
  return delivered;
}

Deno.test("sealer: members prove each other, then round trip, replays, tampering, own datagrams, misdirection", () => {
  const alice = new Member(41000), bob = new Member(41001), carol = new Member(41002);
  const frame = new Uint8Array(100).map((_, i) => i);
  const early = sealFrame(alice.sealer, frame);
  assert.equal(openDatagram(bob, early, alice.address, true).verdict, Verdict.unproven);
  for (const member of [alice, bob, carol]) member.sealer.greet(Date.now() / 1000);
  exchange([alice, bob, carol]);
  for (const member of [alice, bob, carol]) assert.equal(member.sealer.knownSenders, 2);

  const first = sealFrame(alice.sealer, frame);
  const second = sealFrame(alice.sealer, frame);
  assert.equal(first.length, frame.length + SEALED_PREFIX);
  assert.deepEqual([...first.subarray(0, 8)], [8, 0, 0, 0x5e, 0, 0, 42, 0]);
  assert.notDeepEqual(first.subarray(SEALED_PREFIX), frame, "the frame is encrypted");
  assert.notDeepEqual(first.subarray(SEALED_PREFIX), second.subarray(SEALED_PREFIX), "new nonce");
  const opened = openDatagram(bob, first, alice.address, true);
  assert.equal(opened.verdict, Verdict.ok);
  assert.deepEqual(opened.frame, frame);
  assert.equal(openDatagram(bob, first, alice.address, true).verdict, Verdict.replayed);
  assert.equal(openDatagram(bob, second, alice.address, true).verdict, Verdict.ok);
  assert.equal(
    openDatagram(bob, early, alice.address, true).verdict,
    Verdict.replayed,
    "sealed before alice proved herself to bob",
  );
  assert.equal(openDatagram(alice, second, alice.address, true).verdict, Verdict.own);

  for (const at of [3, 9, 13, 17, 22, 30, SEALED_PREFIX + 5]) {
    const tampered = sealFrame(alice.sealer, frame);
    tampered[at] ^= 0x01;
    const verdict = openDatagram(bob, tampered, alice.address, true).verdict;
    assert.notEqual(verdict, Verdict.ok, `a flipped bit at byte ${at} is caught`);
  }

  // Alice to bob's unicast address, replayed to carol's, from alice's or anyone's address.
  const toBob = sealFrame(alice.sealer, frame, bob.address);
  for (const from of [alice.address, SocketAddress.parse("127.0.0.9", 5000)!]) {
    assert.equal(openDatagram(carol, toBob, from, false).verdict, Verdict.misdirected);
    assert.equal(openDatagram(carol, toBob, from, true).verdict, Verdict.misdirected);
  }
  assert.equal(openDatagram(bob, toBob, alice.address, false).verdict, Verdict.ok);

  // A fresh datagram of alice's from another address: not delivered until she answers there.
  const moved = SocketAddress.parse("127.0.0.9", 5000)!;
  assert.equal(
    openDatagram(carol, sealFrame(alice.sealer, frame), moved, true).verdict,
    Verdict.unproven,
  );
  const hellos = carol.sealer.takeOutgoing();
  assert.equal(hellos.length, 1, "carol challenges the new address");
  assert.deepEqual(hellos[0].to!.subarray(0, 8), moved.bytes.subarray(0, 8));
  assert.equal(
    openDatagram(carol, sealFrame(alice.sealer, frame), alice.address, true).verdict,
    Verdict.ok,
    "alice at her proven address is still fine",
  );

  const goodbye = sealFrame(alice.sealer, new Uint8Array(0));
  assert.equal(goodbye.length, SEALED_PREFIX);
  assert.equal(openDatagram(bob, goodbye, alice.address, true).verdict, Verdict.ok);
  assert.equal(openDatagram(bob, goodbye, alice.address, true).verdict, Verdict.unproven);
  for (const member of [alice, bob, carol]) member.sealer.close();
});

Deno.test("destination tags keep their values: older plugs compute the same", () => {
  const tags = [
    ["239.1.1.1", 14789, 0x49450643],
    ["127.0.0.1", 41001, 0xd163787c],
    ["10.0.0.2", 5, 0x68855308],
    ["ff05:56de::1", 14789, 0xe4a6080c],
    ["fe80::1", 65535, 0x65460936],
  ] as const;
  for (const [ip, port, tag] of tags) {
    assert.equal(destinationTag(SocketAddress.parse(ip, port)!.bytes, 0), tag, `${ip} ${port}`);
  }
});

Deno.test("sealer: sealFrame seals as seal does, for the group or a member's address", () => {
  const alice = new Member(41010), bob = new Member(41011), carol = new Member(41012);
  for (const member of [alice, bob, carol]) member.sealer.greet(Date.now() / 1000);
  exchange([alice, bob, carol]);
  const frame = new Uint8Array(200).map((_, i) => i * 3);
  const batch = new FrameBatch(4);
  for (let i = 0; i < 3; i++) {
    batch.push(frame);
    batch.bytes.set(sealedHeader(42), batch.offset(i) - SEALED_PREFIX);
  }
  const addresses = new Uint8Array(3 * SOCKADDR_SIZE);
  addresses.set(bob.address.bytes.subarray(0, SOCKADDR_SIZE), SOCKADDR_SIZE);
  addresses.set(carol.address.bytes.subarray(0, SOCKADDR_SIZE), 2 * SOCKADDR_SIZE);
  alice.sealer.startBatch(Date.now() / 1000);
  assert.ok(alice.sealer.sealFrame(batch, 0, frame.length));
  assert.ok(alice.sealer.sealFrame(batch, 1, frame.length, addresses, SOCKADDR_SIZE));
  assert.ok(alice.sealer.sealFrame(batch, 2, frame.length, addresses, 2 * SOCKADDR_SIZE));
  const datagram = (i: number) =>
    batch.bytes.slice(batch.offset(i) - SEALED_PREFIX, batch.offset(i) + frame.length);
  const toGroup = openDatagram(bob, datagram(0), alice.address, true);
  assert.equal(toGroup.verdict, Verdict.ok);
  assert.deepEqual(toGroup.frame, frame);
  const toBob = openDatagram(bob, datagram(1), alice.address, false);
  assert.equal(toBob.verdict, Verdict.ok);
  assert.deepEqual(toBob.frame, frame);
  assert.equal(openDatagram(bob, datagram(2), alice.address, false).verdict, Verdict.misdirected);
  assert.equal(openDatagram(carol, datagram(2), alice.address, false).verdict, Verdict.ok);
  assert.equal(openDatagram(carol, datagram(1), alice.address, false).verdict, Verdict.misdirected);
  // The same bytes as seal writes, but for the sequence number and what it seals.
  const sealed = sealFrame(alice.sealer, frame, bob.address);
  const tagAt = 12;
  assert.deepEqual(datagram(1).subarray(tagAt, tagAt + 4), sealed.subarray(tagAt, tagAt + 4));
  assert.deepEqual(datagram(1).subarray(0, tagAt), sealed.subarray(0, tagAt));
});

/** Cuts `frame` into pieces of at most `limit` bytes with `sealer`, for `to`; returns the datagrams. */
function sealPieces(sealer: Sealer, frame: Uint8Array, limit: number, to?: SocketAddress) {
  const batch = new FrameBatch(2);
  batch.push(new Uint8Array(60)); // a frame before, so that slot 1 is not the first
  batch.push(frame);
  batch.bytes.set(sealedHeader(42), batch.offset(1) - SEALED_PREFIX);
  sealer.setPieceLimit(limit);
  sealer.startBatch(Date.now() / 1000);
  const addresses = to?.bytes.slice(0, SOCKADDR_SIZE);
  assert.ok(sealer.sealPieces(batch, 1, frame.length, addresses, 0));
  assert.equal(sealer.pieces, Math.ceil(frame.length / limit));
  return Array.from({ length: sealer.pieces }, (_, k) => {
    const at = batch.offset(1) - SEALED_PREFIX + k * sealer.pieceStride;
    const datagram = sealer.pieceDatagram(k);
    assert.ok(datagram - SEALED_PREFIX <= limit, `piece ${k}: longer than ${limit} bytes`);
    return batch.bytes.slice(at, at + datagram);
  });
}

Deno.test("sealer: a frame too long for a datagram goes in pieces that open whole; one with a piece missing is dropped", () => {
  const alice = new Member(41020), bob = new Member(41021), carol = new Member(41022);
  for (const member of [alice, bob, carol]) member.sealer.greet(Date.now() / 1000);
  exchange([alice, bob, carol]);
  const frame = new Uint8Array(1514).map((_, i) => (i * 7) & 0xff);
  const open = (datagram: Uint8Array, from = alice) =>
    openDatagram(bob, datagram, from.address, true);
  // Whole: every piece is kept but the last, which gives the frame back, in 2 and in 4 pieces.
  for (const limit of [1000, 500]) {
    const pieces = sealPieces(alice.sealer, frame, limit);
    assert.equal(pieces.length, limit === 1000 ? 2 : 4);
    const sizes = pieces.map((piece) => piece.length - SEALED_PREFIX);
    assert.equal(sizes.reduce((a, b) => a + b), frame.length);
    assert.ok(sizes.slice(0, -1).every((size) => size === sizes[0]), "equal pieces, GSO-able");
    for (const piece of pieces.slice(0, -1)) assert.equal(open(piece).verdict, Verdict.piece);
    assert.deepEqual(joinLast(bob, pieces.at(-1)!, alice), frame, `${limit}: the frame, whole`);
  }
  // A piece lost: the frame is dropped, counted once, and the next frame still arrives.
  const lost = sealPieces(alice.sealer, frame, 500);
  assert.equal(open(lost[0]).verdict, Verdict.piece);
  assert.equal(open(lost[2]).verdict, Verdict.incomplete, "a piece that does not follow");
  assert.equal(open(lost[3]).verdict, Verdict.piece, "the rest of a frame counted already");
  // A jumbo frame's first piece lost: its six other pieces count it once.
  const jumbo = new Uint8Array(9014).map((_, i) => (i * 13) & 0xff);
  const headless = sealPieces(alice.sealer, jumbo, 1400).slice(1);
  assert.equal(headless.length, 6);
  assert.deepEqual(headless.map((piece) => open(piece).verdict), [
    Verdict.incomplete,
    ...Array(5).fill(Verdict.piece),
  ]);
  // Two pieces lost from the middle: once too.
  const holes = sealPieces(alice.sealer, jumbo, 1400).filter((_, k) => k !== 2 && k !== 4);
  assert.deepEqual(holes.map((piece) => open(piece).verdict), [
    Verdict.piece,
    Verdict.piece,
    Verdict.incomplete,
    Verdict.piece,
    Verdict.piece,
  ]);
  // The longest frame, on a 1500-byte underlay (7 pieces) and on a 9000-byte one (2): its pieces
  // fit its slot, and it opens whole.
  const longest = new Uint8Array(MAX_FRAME).map((_, i) => (i * 5) & 0xff);
  for (const limit of [1500 - 28 - SEALED_PREFIX, 9000 - 28 - SEALED_PREFIX]) {
    const pieces = sealPieces(alice.sealer, longest, limit);
    for (const piece of pieces.slice(0, -1)) assert.equal(open(piece).verdict, Verdict.piece);
    assert.deepEqual(joinLast(bob, pieces.at(-1)!, alice), longest, `limit ${limit}`);
  }
  const whole = sealPieces(alice.sealer, jumbo, 1400);
  for (const piece of whole.slice(0, -1)) assert.equal(open(piece).verdict, Verdict.piece);
  assert.deepEqual(joinLast(bob, whole.at(-1)!, alice), jumbo, "a jumbo frame after them, whole");
  const next = sealPieces(alice.sealer, frame, 1000);
  assert.equal(open(next[0]).verdict, Verdict.piece);
  assert.deepEqual(joinLast(bob, next[1], alice), frame);
  // A first piece whose last never came: dropped when the next frame's first piece comes.
  const cut = sealPieces(alice.sealer, frame, 1000);
  assert.equal(open(cut[0]).verdict, Verdict.piece);
  const after = sealPieces(alice.sealer, frame, 1000);
  assert.equal(open(after[0]).verdict, Verdict.incomplete, "cut[0] never got its last");
  assert.deepEqual(joinLast(bob, after[1], alice), frame);
  // A last piece alone, a piece again, a last piece twice: nothing delivered.
  const again = sealPieces(alice.sealer, frame, 1000);
  assert.equal(open(again[1]).verdict, Verdict.incomplete, "a last piece with no piece before");
  assert.equal(open(again[0]).verdict, Verdict.piece, "late, but fresh");
  assert.equal(open(again[0]).verdict, Verdict.replayed);
  assert.equal(open(again[1]).verdict, Verdict.replayed, "the last piece was seen already");
  // Pieces of two senders between each other each make their own frame; a tampered piece is
  // forged, and its frame never completes.
  const fromAlice = sealPieces(alice.sealer, frame, 1000);
  const other = frame.map((byte) => byte ^ 0xff);
  const fromCarol = sealPieces(carol.sealer, other, 1000);
  assert.equal(open(fromAlice[0]).verdict, Verdict.incomplete, "again[0] kept, never completed");
  assert.equal(open(fromCarol[0], carol).verdict, Verdict.piece);
  assert.deepEqual(joinLast(bob, fromAlice[1], alice), frame);
  assert.deepEqual(joinLast(bob, fromCarol[1], carol), other);
  const tampered = sealPieces(alice.sealer, frame, 1000);
  tampered[0][SEALED_PREFIX + 3] ^= 1;
  assert.equal(open(tampered[0]).verdict, Verdict.forged);
  assert.equal(open(tampered[1]).verdict, Verdict.incomplete);
  // For one member: its tag is in every piece; another member refuses them.
  const toBob = sealPieces(alice.sealer, frame, 1000, bob.address);
  assert.equal(openDatagram(carol, toBob[0], alice.address, false).verdict, Verdict.misdirected);
  assert.equal(openDatagram(bob, toBob[0], alice.address, false).verdict, Verdict.piece);
  for (const member of [alice, bob, carol]) member.sealer.close();
});

/** Opens `datagram`, a last piece from `from`, at `member`: returns the frame it made whole. */
function joinLast(member: Member, datagram: Uint8Array, from: Member): Uint8Array {
  const batch = new FrameBatch(1);
  batch.bytes.set(datagram, HEADROOM - SEALED_PREFIX);
  const names = new Uint8Array(SOCKADDR_SIZE);
  names.set(from.address.bytes.subarray(0, SOCKADDR_SIZE));
  const source = { names, offset: 0, fromGroup: true };
  const verdict = member.sealer.open(
    batch,
    0,
    datagram.length - SEALED_PREFIX,
    Date.now() / 1000,
    source,
  );
  assert.equal(verdict, Verdict.joined);
  return batch.bytes.slice(HEADROOM, HEADROOM + member.sealer.joinedLength);
}

Deno.test("sealer: other keys, VNIs, groups and ports give other keys; a fresh member refuses recordings", () => {
  const alice = new Member(41010), bob = new Member(41011);
  for (const member of [alice, bob]) member.sealer.greet(Date.now() / 1000);
  exchange([alice, bob]);
  const frame = new Uint8Array(60).fill(3);
  const recorded = [0, 1, 2, 3].map(() => sealFrame(alice.sealer, frame));
  for (const datagram of recorded) {
    assert.equal(openDatagram(bob, datagram, alice.address, true).verdict, Verdict.ok);
  }
  const others = [
    new Member(41012, new Uint8Array(32).fill(8)),
    new Member(41013, SECRET, { vni: 43, group: GROUP.bytes }),
    new Member(41014, SECRET, { vni: 42, group: SocketAddress.parse("239.1.1.2", 14789)!.bytes }),
    new Member(41015, SECRET, { vni: 42, group: GROUP.withPort(14790).bytes }),
  ];
  const ids = new Set([alice.sealer.keyId, ...others.map((other) => other.sealer.keyId)]);
  assert.equal(ids.size, 5, "five places, five key ids");
  for (const other of others) {
    assert.equal(
      openDatagram(other, sealFrame(alice.sealer, frame), alice.address, true).verdict,
      Verdict.unknownKey,
    );
    other.sealer.close();
  }
  // A plug started after the recording: it proves alice, and refuses all she sent before.
  const fresh = new Member(41016);
  fresh.sealer.greet(Date.now() / 1000);
  exchange([alice, fresh]);
  assert.equal(fresh.sealer.knownSenders, 1);
  for (const datagram of recorded) {
    assert.equal(openDatagram(fresh, datagram, alice.address, true).verdict, Verdict.replayed);
  }
  assert.equal(
    openDatagram(fresh, sealFrame(alice.sealer, frame), alice.address, true).verdict,
    Verdict.ok,
  );
  for (const member of [alice, bob, fresh]) member.sealer.close();
});

Deno.test("sealer: a new key opens at once, seals once every member showed it, and the old one still opens", () => {
  const members = [new Member(41020), new Member(41021), new Member(41022)];
  for (const member of members) member.sealer.greet(Date.now() / 1000);
  exchange(members);
  const oldId = members[0].sealer.keyId;
  const next = new Uint8Array(32).fill(9);
  const frame = new Uint8Array(60).fill(5);
  const now = Date.now() / 1000;
  for (const [k, member] of members.entries()) {
    assert.equal(member.sealer.reload(next.slice(), now), "new key loaded");
    assert.equal(member.sealer.reload(next.slice(), now), "unchanged");
    exchange(members);
    // Until the last member has the new key, everyone seals with the old one.
    const expectNew = k === members.length - 1;
    for (const other of members.slice(0, k + 1)) {
      if (!expectNew) assert.equal(other.sealer.keyId, oldId, `member ${k}: still the old key`);
    }
    // Whatever each seals now, every other opens.
    for (const from of members) {
      const datagram = sealFrame(from.sealer, frame);
      for (const to of members) {
        if (to === from) continue;
        assert.equal(openDatagram(to, datagram, from.address, true).verdict, Verdict.ok);
      }
    }
  }
  for (const member of members) {
    assert.notEqual(member.sealer.keyId, oldId, "all switched");
    assert.equal(member.sealer.keys.previous, oldId, "the old key is kept a while");
  }
  for (const member of members) member.sealer.close();
});

Deno.test("key files: keygen writes 0600, a file open to others is refused, env:NAME works", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/lan.key`;
    const made = await run([...VDENO, "keygen", path]);
    assert.equal(made.code, 0, made.stderr);
    assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
    assert.match(Deno.readTextFileSync(path), /^[0-9a-f]{64}\n$/);
    assert.equal(readKeyFile(path).length, 32);
    const again = await run([...VDENO, "keygen", path]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /exists; use --force/);
    assert.notEqual(newKeyText(), newKeyText());

    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      Deno.chmodSync(path, mode);
      assert.throws(() => readKeyFile(path), /open to other users .*chmod 600/);
      const plug = await run([...VDENO, "plug", `vxvde://239.9.9.9/key='${path}'`], {
        timeoutMs: 20_000,
      });
      assert.equal(plug.code, 1);
      const lines = plug.stderr.trim().split("\n");
      assert.equal(lines.length, 1, plug.stderr);
      assert.match(lines[0], /is open to other users \(mode 06\d\d\); run chmod 600/);
    }
    const unquoted = await run([...VDENO, "plug", `vxvde://239.9.9.9/key=${path}`]);
    assert.equal(unquoted.code, 1);
    assert.match(
      unquoted.stderr.trim(),
      /^vdeno plug: Bad key: .* quote it: key='\/etc\/vdeno\/lan.key'$/,
    );
    Deno.writeTextFileSync(path, "not a key\n", { mode: 0o600 });
    Deno.chmodSync(path, 0o600);
    assert.throws(() => readKeyFile(path), /expected 64 hex digits/);
    Deno.env.set("VDENO_TEST_KEY", "ab".repeat(32));
    assert.deepEqual(loadKey("env:VDENO_TEST_KEY"), new Uint8Array(32).fill(0xab));
    assert.throws(() => loadKey("env:VDENO_NO_SUCH_KEY"), /VDENO_NO_SUCH_KEY is not set/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

interface PlugStatus {
  counters: Record<string, number>;
  learned: { mac: string }[];
}

async function vxStatus(host: Host, name: string): Promise<PlugStatus> {
  return JSON.parse(await host.sh([...VDENO, "status", "--json", name])).plugs[1];
}

/** Starts `vdeno plug tap://tap0 VNL` named `name` on `host`, with 10.0.0.N and a fixed MAC. */
async function startPlug(host: Host, name: string, vnl: string, n: number, env = {}) {
  const plug = host.vdeno(["plug", "--name", name, "tap://tap0", vnl], { env });
  await host.waitForLink("tap0", undefined, plug);
  await host.configure("tap0", `10.0.0.${n}/24`, `02:00:00:00:00:0${n}`);
  return plug;
}

function makeKeys(count: number): { dir: string; paths: string[] } {
  const dir = Deno.makeTempDirSync();
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const path = `${dir}/k${i}`;
    Deno.writeTextFileSync(path, newKeyText(), { mode: 0o600 });
    paths.push(path);
  }
  return { dir, paths };
}

hostTest(
  "keyed plugs ping; a plug without the key or with another key gets no frame through either way",
  ["ping"],
  async () => {
    const { dir, paths: [key, otherKey] } = makeKeys(2);
    try {
      await using lan = await Lan.create(4);
      const [a, b, open, wrong] = lan.hosts;
      const group = "vxvde://239.6.0.1/vni=77";
      await startPlug(a, "sa", `${group}/key='${key}'`, 1);
      // The same key through the environment.
      const hex = Deno.readTextFileSync(key).trim();
      await startPlug(b, "sb", `${group}/key=env:LAN_KEY`, 2, { LAN_KEY: hex });
      await startPlug(open, "so", group, 3);
      await startPlug(wrong, "sw", `${group}/key='${otherKey}'`, 4);
      assert.ok(await a.pingable("10.0.0.2"), "keyed A pings keyed B");
      assert.ok(await b.pingable("10.0.0.1"), "keyed B pings keyed A");
      for (const [outsider, address] of [[open, "10.0.0.3"], [wrong, "10.0.0.4"]] as const) {
        for (const target of ["10.0.0.1", "10.0.0.2"]) {
          const out = await outsider.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", target]);
          assert.notEqual(out.code, 0, `${outsider.netns} reached ${target}`);
        }
        const into = await a.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", address]);
        assert.notEqual(into.code, 0, `A reached ${address}`);
      }
      const [sa, sb, so, sw] = await Promise.all([
        vxStatus(a, "sa"),
        vxStatus(b, "sb"),
        vxStatus(open, "so"),
        vxStatus(wrong, "sw"),
      ]);
      const macs = (status: PlugStatus) => status.learned.map((entry) => entry.mac).sort();
      assert.deepEqual(macs(sa), ["02:00:00:00:00:02"], "A learned only B");
      assert.deepEqual(macs(sb), ["02:00:00:00:00:01"], "B learned only A");
      assert.deepEqual(macs(so), [], "the open plug learned nobody");
      assert.deepEqual(macs(sw), [], "the wrong-key plug learned nobody");
      assert.equal(so.counters.framesIn, 0, "nothing reached the open plug");
      assert.equal(sw.counters.framesIn, 0, "nothing reached the wrong-key plug");
      assert.ok(so.counters.dropWrongHeader > 0, "the open plug dropped sealed datagrams");
      assert.ok(sw.counters.dropAuthFailed > 0, "the wrong-key plug failed to open them");
      assert.ok(sa.counters.dropAuthFailed > 0, "A dropped and counted what outsiders sent");
      assert.ok(sb.counters.dropAuthFailed > 0, "B dropped and counted what outsiders sent");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "replayed sealed datagrams, to the group and to a plug's own port, are dropped and counted",
  ["ping"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      const [a, b, attacker] = lan.hosts;
      const group = `vxvde://239.6.0.2/key='${key}'`;
      await startPlug(a, "ra", group, 1);
      await startPlug(b, "rb", group, 2);
      assert.ok(await a.pingable("10.0.0.2"));
      const unicastPort = JSON.parse(await a.sh([...VDENO, "status", "--json", "ra"])).plugs[1]
        .unicastPort;
      const recorder = attacker.spawn([
        Deno.execPath(),
        "run",
        "-A",
        "--quiet",
        REPLAY,
        "239.6.0.2",
        "14789",
        "6",
        "--from",
        b.address,
        `${a.address}:${unicastPort}`,
      ]);
      await recorder.waitForOutput((text) => text.includes("listening"));
      const before = await vxStatus(a, "ra");
      // Broadcast pings travel to the group, where the attacker records them.
      await b.run(["ping", "-b", "-c", "8", "-i", "0.2", "10.0.0.255"]);
      assert.equal((await recorder.exited()).code, 0, recorder.stderr);
      const report = JSON.parse(recorder.stdout);
      assert.equal(report.recorded, 6);
      assert.equal(report.sent, 12);
      await a.run(["ping", "-c", "1", "10.0.0.2"]); // a frame after the replays, as a barrier
      const after = await vxStatus(a, "ra");
      assert.equal(
        after.counters.dropReplay - before.counters.dropReplay,
        12,
        "each replay, to the group and to the unicast port, is counted once",
      );
      assert.equal(after.counters.dropAuthFailed - before.counters.dropAuthFailed, 0);
      assert.ok(await a.pingable("10.0.0.2"), "the network still works");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

const PATTERN = "7661646e6f2d706c61696e2d74657874"; // "vadno-plain-text", the ping payload

/** Pings A -> B with PATTERN as payload while tcpdump on B's underlay prints every UDP datagram in hex. */
async function pingCaptureHex(vnl: string): Promise<string[]> {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  await startPlug(a, "ca", vnl, 1);
  await startPlug(b, "cb", vnl, 2);
  assert.ok(await a.pingable("10.0.0.2"));
  const tcpdump = b.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", "-x", "udp"]);
  await tcpdump.waitForOutput((text) => text.includes("listening on"));
  const ping = await a.run(["ping", "-c", "5", "-i", "0.2", "-p", PATTERN, "10.0.0.2"]);
  assert.equal(ping.code, 0, ping.stdout);
  await a.run(["ping", "-b", "-c", "2", "-i", "0.2", "-p", PATTERN, "10.0.0.255"]);
  await tcpdump.stop("SIGINT");
  const packets: string[] = [];
  for (const line of tcpdump.stdout.split("\n")) {
    const hex = /^\s+0x[0-9a-f]+:\s+(.*)$/.exec(line);
    if (hex) packets[packets.length - 1] += hex[1].replace(/\s+/g, "");
    else if (line.includes(" UDP")) packets.push("");
  }
  return packets;
}

hostTest(
  "a tcpdump capture of a keyed ping carries no plaintext of the frames (an open one does)",
  ["ping", "tcpdump"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      const open = await pingCaptureHex("vxvde://239.6.0.3");
      assert.ok(open.length >= 10, `captured ${open.length} datagrams`);
      assert.ok(open.some((hex) => hex.includes(PATTERN)), "the control: an open network shows it");
      const sealed = await pingCaptureHex(`vxvde://239.6.0.3/key='${key}'`);
      assert.ok(sealed.length >= 10, `captured ${sealed.length} datagrams`);
      const carrying = sealed.filter((hex) => hex.includes(PATTERN.slice(0, 16)));
      assert.equal(carrying.length, 0, "no sealed datagram shows the ping payload");
      // IP (20) + UDP (8) + sealed header: byte 3 of the vxvde header is the sealed mark.
      assert.ok(sealed.every((hex) => hex.slice(56, 72).startsWith("0800005e")), sealed[0]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "a vde_plug on the same group and VNI neither receives frames from a keyed network nor gets frames into it",
  ["ping", "vde_plug"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      const [a, b, c] = lan.hosts;
      const group = "vxvde://239.6.0.4";
      await startPlug(a, "va", `${group}/key='${key}'`, 1);
      await startPlug(b, "vb", `${group}/key='${key}'`, 2);
      c.spawn(["vde_plug", "tap://tap0", group]);
      await c.waitForLink("tap0");
      await c.configure("tap0", "10.0.0.3/24", "02:00:00:00:00:03");
      assert.ok(await a.pingable("10.0.0.2"), "the keyed plugs talk");
      const before = await vxStatus(a, "va");
      const out = await c.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.1"]);
      assert.notEqual(out.code, 0, "vde_plug's host reached A");
      const into = await a.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.3"]);
      assert.notEqual(into.code, 0, "A reached vde_plug's host");
      await b.run(["ping", "-b", "-c", "3", "-i", "0.2", "10.0.0.255"]);
      const stats = JSON.parse(await c.sh(["ip", "-s", "-j", "link", "show", "tap0"]))[0].stats64;
      assert.equal(stats.rx.packets, 0, "vde_plug wrote no frame of the keyed network to its TAP");
      const after = await vxStatus(a, "va");
      assert.ok(
        after.counters.dropAuthFailed > before.counters.dropAuthFailed,
        "vde_plug's plaintext frames were dropped and counted",
      );
      assert.deepEqual(after.learned.map((entry) => entry.mac), ["02:00:00:00:00:02"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "goodbyes are sealed: a keyed plug forgets a peer that leaves, never on a forged or plaintext goodbye",
  ["ping"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(3);
      const [a, b, attacker] = lan.hosts;
      const group = `vxvde://239.6.0.5/key='${key}'`;
      await startPlug(a, "ga", group, 1);
      await startPlug(b, "gb", group, 2);
      assert.ok(await a.pingable("10.0.0.2"));
      const before = await vxStatus(a, "ga");
      assert.deepEqual(before.learned.map((entry) => entry.mac), ["02:00:00:00:00:02"]);
      const unicastPort = JSON.parse(await a.sh([...VDENO, "status", "--json", "ga"])).plugs[1]
        .unicastPort;
      // Five bare plaintext headers of VNI 1, and five sealed-looking goodbyes with a made-up seal.
      const net = new URL("../ffi/net.ts", import.meta.url).pathname;
      const seal = new URL("../plugs/seal.ts", import.meta.url).pathname;
      const vxvde = new URL("../plugs/vxvde.ts", import.meta.url).pathname;
      const script = `
      import { sendTo, SocketAddress, udpSocket } from "${net}";
      import { SEALED_PREFIX, sealedHeader } from "${seal}";
      import { vxvdeHeader } from "${vxvde}";
      const fd = udpSocket(2);
      for (const to of [SocketAddress.parse("239.6.0.5", 14789), SocketAddress.parse("${a.address}", ${unicastPort})]) {
        for (let i = 0; i < 5; i++) {
          sendTo(fd, vxvdeHeader(1), 8, to);
          const forged = crypto.getRandomValues(new Uint8Array(SEALED_PREFIX));
          forged.set(sealedHeader(1));
          new DataView(forged.buffer).setUint32(8, Math.floor(Date.now() / 1000));
          sendTo(fd, forged, SEALED_PREFIX, to);
        }
      }`;
      await attacker.sh([Deno.execPath(), "eval", script]);
      await a.run(["ping", "-c", "1", "10.0.0.2"]); // a frame after the forgeries, as a barrier
      const forgedAfter = await vxStatus(a, "ga");
      assert.equal(forgedAfter.counters.goodbyesReceived, before.counters.goodbyesReceived);
      assert.equal(forgedAfter.counters.dropAuthFailed - before.counters.dropAuthFailed, 20);
      assert.deepEqual(forgedAfter.learned.map((entry) => entry.mac), ["02:00:00:00:00:02"]);

      await b.processes[0].stop("SIGTERM");
      let left = forgedAfter;
      for (
        let tries = 0;
        tries < 50 && left.counters.goodbyesReceived === before.counters.goodbyesReceived;
        tries++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        left = await vxStatus(a, "ga");
      }
      assert.equal(
        left.counters.goodbyesReceived - before.counters.goodbyesReceived,
        1,
        "B's goodbye",
      );
      assert.deepEqual(left.learned, [], "A forgot B");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "key material: a = COMMAND child (also of a daemon) and a vdeno ns command see neither the key nor vdeno's own variables",
  ["unshare"],
  async () => {
    const dir = Deno.makeTempDirSync();
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      const hex = newKeyText().trim();
      const env = { LAN_KEY: hex, OTHER_VARIABLE: "kept" };
      const vnl = "vxvde://239.6.0.6/key=env:LAN_KEY";
      const dump = (name: string) => ["sh", "-c", `env > ${dir}/${name}`];
      const plain = host.vdeno(["plug", vnl, "=", ...dump("plug")], { env });
      assert.equal((await plain.exited()).code, 0, plain.stderr);
      const daemon = host.vdeno(["plug", "-d", vnl, "=", ...dump("daemon")], { env });
      assert.equal((await daemon.exited()).code, 0, daemon.stderr);
      const ns = host.vdeno(["ns", vnl, ...dump("ns")], { env });
      assert.equal((await ns.exited()).code, 0, ns.stderr);
      for (const name of ["plug", "daemon", "ns"]) {
        let seen = "";
        for (let tries = 0; tries < 100 && !seen.includes("OTHER_VARIABLE"); tries++) {
          await new Promise((resolve) => setTimeout(resolve, 50));
          try {
            seen = Deno.readTextFileSync(`${dir}/${name}`);
          } catch { /* not written yet */ }
        }
        assert.match(seen, /^OTHER_VARIABLE=kept$/m, `${name}: the child's environment`);
        assert.ok(!seen.includes(hex), `${name}: the child saw the key`);
        assert.doesNotMatch(seen, /^LAN_KEY=/m, name);
        assert.doesNotMatch(seen, /^VDENO_DAEMON_CHILD=/m, name);
        assert.doesNotMatch(seen, /invocation-count-for-turbofan/, `${name}: vdeno's V8 flags`);
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

Deno.test("key files: one planted by another user (mode 0600, owner nobody) is refused, even by root, in one line", async (t) => {
  if (Deno.uid() !== 0) {
    if (Deno.env.get("CI") === "true") throw new Error(`${t.name}: needs root in CI`);
    console.error(`\n!!! SKIPPED ${t.name}: needs root (chown)\n`);
    return;
  }
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/planted.key`;
    Deno.writeTextFileSync(path, newKeyText(), { mode: 0o600 });
    Deno.chmodSync(path, 0o600);
    Deno.chownSync(path, 65534, 65534);
    assert.throws(() => readKeyFile(path), /belongs to user 65534, not to you \(0\) or root/);
    const plug = await run([...VDENO, "plug", `vxvde://239.9.9.9/key='${path}'`], {
      timeoutMs: 20_000,
    });
    assert.equal(plug.code, 1);
    const lines = plug.stderr.trim().split("\n");
    assert.equal(lines.length, 1, plug.stderr);
    assert.match(
      lines[0],
      /^vdeno plug: Key file .* belongs to user 65534, not to you \(0\) or root/,
    );
    Deno.chownSync(path, 0, 0);
    assert.equal(readKeyFile(path).length, 32, "the same file, owned by root, is accepted");
    assert.throws(() => readKeyFile(dir), /Is a directory|is not a regular file/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

hostTest(
  "a key mismatch is warned about once per 10 seconds, not per datagram: open, keyed and wrong-key plugs on one group",
  ["ping"],
  async () => {
    const { dir, paths: [key, otherKey] } = makeKeys(2);
    try {
      await using lan = await Lan.create(3);
      const [keyed, open, wrong] = lan.hosts;
      const group = "vxvde://239.6.0.7/vni=78";
      const started = Date.now();
      const plugs = [
        await startPlug(keyed, "mk", `${group}/key='${key}'`, 1),
        await startPlug(open, "mo", group, 2),
        await startPlug(wrong, "mw", `${group}/key='${otherKey}'`, 3),
      ];
      // 150 broadcasts each from the keyed and the open host, all to the group.
      await Promise.all(
        [keyed, open].map((host) =>
          host.run(["ping", "-b", "-c", "150", "-i", "0.01", "-W", "1", "10.0.0.255"])
        ),
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      const elapsed = (Date.now() - started) / 1000;
      const [mk, mo, mw] = await Promise.all([
        vxStatus(keyed, "mk"),
        vxStatus(open, "mo"),
        vxStatus(wrong, "mw"),
      ]);
      const most = 1 + Math.floor(elapsed / MISMATCH_WARNING_SECONDS);
      const expectations = [
        [plugs[0], /a plug without a key is on this group/, mk.counters.dropAuthFailed],
        [
          plugs[1],
          /a keyed plug is on this group and VNI; give this plug its key=/,
          mo.counters.dropWrongHeader,
        ],
        [plugs[2], /carry a key id this plug does not hold/, mw.counters.dropAuthFailed],
      ] as const;
      for (const [plug, pattern, dropped] of expectations) {
        const lines = plug.stderr.split("\n").filter((line) => pattern.test(line));
        assert.ok(dropped >= 150, `${pattern}: ${dropped} dropped`);
        assert.ok(
          lines.length >= 1 && lines.length <= most,
          `${pattern}: ${lines.length} warnings for ${dropped} drops in ${elapsed} s:\n${plug.stderr}`,
        );
        assert.match(
          lines[0],
          / vdeno warn: vxvde:\/\/239\.6\.0\.7\/vni=78.*: .* from 10(\.\d+){3}:\d+/,
        );
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);
/** Waits until `ready` holds for the status of plug `name` on `host`; returns that status. */
async function statusWhen(
  host: Host,
  name: string,
  ready: (status: PlugStatus) => boolean,
): Promise<PlugStatus> {
  let status = await vxStatus(host, name);
  for (let tries = 0; tries < 50 && !ready(status); tries++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    status = await vxStatus(host, name);
  }
  return status;
}

/** Starts the replay fixture on `host` recording `count` datagrams `from` an address off `group`. */
function record(host: Host, group: string, count: number, from: string, targets: string[]) {
  return host.spawn([
    Deno.execPath(),
    "run",
    "-A",
    "--quiet",
    REPLAY,
    group,
    "14789",
    String(count),
    "--from",
    from,
    ...targets,
  ]);
}

/** Sends the datagrams (hex lines) from `host` to `targets` with the replay fixture. */
async function sendHex(host: Host, lines: string[], targets: string[]) {
  const result = await host.run(
    [Deno.execPath(), "run", "-A", "--quiet", REPLAY, "--send", ...targets],
    { stdin: lines.join("\n") + "\n" },
  );
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as { recorded: number; sent: number };
}

hostTest(
  "attacks on a keyed network do no harm: a member's unicast replayed to another, own datagrams reflected, recordings replayed to a fresh plug, datagrams carried to another group",
  ["ping", "tcpdump"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(5);
      const [a, b, c, d, attacker] = lan.hosts;
      const group = `vxvde://239.6.0.8/key='${key}'`;
      await startPlug(a, "xa", group, 1);
      await startPlug(b, "xb", group, 2);
      await startPlug(c, "xc", group, 3);
      assert.ok(await b.pingable("10.0.0.1"));
      assert.ok(await c.pingable("10.0.0.1"));
      const port = async (host: Host, name: string) =>
        (await vxStatus(host, name) as unknown as { unicastPort: number }).unicastPort;
      const [portA, portC] = [await port(a, "xa"), await port(c, "xc")];

      // 1. B's unicast datagrams to A, captured on A's link, sent to C from the attacker.
      const tcpdump = a.spawn([
        "tcpdump",
        "-i",
        "eth0",
        "-nn",
        "-l",
        "-x",
        `udp and src host ${b.address} and dst port ${portA}`,
      ]);
      await tcpdump.waitForOutput((text) => text.includes("listening on"));
      await b.run(["ping", "-c", "5", "-i", "0.2", "10.0.0.1"]);
      await tcpdump.stop("SIGINT");
      const captured: string[] = [];
      for (const line of tcpdump.stdout.split("\n")) {
        const hex = /^\s+0x[0-9a-f]+:\s+(.*)$/.exec(line);
        if (hex) captured[captured.length - 1] += hex[1].replace(/\s+/g, "");
        else if (line.includes(" UDP")) captured.push("");
      }
      const unicast = captured.map((hex) => hex.slice(56)); // past the IP and UDP headers
      assert.ok(unicast.length >= 3, `captured ${unicast.length} datagrams from B to A`);
      const beforeC = await vxStatus(c, "xc");
      const toC = await sendHex(attacker, unicast, [`${c.address}:${portC}`, `239.6.0.8:14789`]);
      assert.equal(toC.sent, 2 * unicast.length);
      const afterC = await statusWhen(
        c,
        "xc",
        (s) => s.counters.dropReplay - beforeC.counters.dropReplay >= toC.sent,
      );
      assert.equal(
        afterC.counters.dropReplay - beforeC.counters.dropReplay,
        toC.sent,
        "C refuses B's datagrams for A, sent to its own address or the group",
      );
      const peersOfC = (afterC as unknown as { learned: { mac: string; peer: string }[] }).learned;
      assert.ok(
        !peersOfC.some((entry) => entry.peer.startsWith(`${attacker.address}:`)),
        `C learned nothing at the attacker's address: ${JSON.stringify(peersOfC)}`,
      );

      // 2. A's own group datagrams, reflected to A's group and unicast port.
      const ownRecorder = record(attacker, "239.6.0.8", 4, a.address, [`${a.address}:${portA}`]);
      await ownRecorder.waitForOutput((text) => text.includes("listening"));
      const beforeA = await vxStatus(a, "xa");
      await a.run(["ping", "-b", "-c", "6", "-i", "0.2", "10.0.0.255"]);
      assert.equal((await ownRecorder.exited()).code, 0, ownRecorder.stderr);
      const afterA = await statusWhen(
        a,
        "xa",
        (s) => s.counters.dropOwnEcho - beforeA.counters.dropOwnEcho >= 6 + 8,
      );
      // Its 6 pings come back by multicast loop (and any other multicast of its TAP), and the 8
      // reflections are refused as its own, not delivered.
      assert.ok(afterA.counters.dropOwnEcho - beforeA.counters.dropOwnEcho >= 6 + 8);

      // 3. B's group datagrams recorded, then replayed to a plug started after the recording;
      // 4. and to a plug with the same key and VNI on another group.
      const tcpdumpB = attacker.spawn([
        "tcpdump",
        "-i",
        "eth0",
        "-nn",
        "-l",
        "-x",
        "-c",
        "4",
        `udp and src host ${b.address} and dst host 239.6.0.8`,
      ]);
      await tcpdumpB.waitForOutput((text) => text.includes("listening on"));
      await b.run(["ping", "-b", "-c", "6", "-i", "0.2", "10.0.0.255"]);
      await tcpdumpB.exited();
      const recorded: string[] = [];
      for (const line of tcpdumpB.stdout.split("\n")) {
        const hex = /^\s+0x[0-9a-f]+:\s+(.*)$/.exec(line);
        if (hex) recorded[recorded.length - 1] += hex[1].replace(/\s+/g, "");
        else if (line.includes(" UDP")) recorded.push("");
      }
      const fromB = recorded.map((hex) => hex.slice(56));
      assert.equal(fromB.length, 4);
      await startPlug(d, "xd", group, 4);
      const other = d.vdeno([
        "plug",
        "--name",
        "xe",
        "tap://tap1",
        `vxvde://239.6.0.9/key='${key}'`,
      ]);
      await d.waitForLink("tap1", undefined, other);
      const proven = await statusWhen(
        d,
        "xd",
        (s) => (s as unknown as { provenSenders: number }).provenSenders >= 3,
      );
      assert.equal((proven as unknown as { provenSenders: number }).provenSenders, 3);
      const portD = await port(d, "xd");
      const [beforeD, beforeE] = [proven, await vxStatus(d, "xe")];
      const replayed = await sendHex(attacker, fromB, [
        `239.6.0.8:14789`,
        `${d.address}:${portD}`,
        `239.6.0.9:14789`,
      ]);
      assert.equal(replayed.sent, 12);
      const afterD = await statusWhen(
        d,
        "xd",
        (s) => s.counters.dropReplay - beforeD.counters.dropReplay >= 8,
      );
      assert.equal(afterD.counters.dropReplay - beforeD.counters.dropReplay, 8, "the fresh plug");
      const afterE = await statusWhen(
        d,
        "xe",
        (s) => s.counters.dropAuthFailed - beforeE.counters.dropAuthFailed >= 4,
      );
      assert.equal(
        afterE.counters.dropAuthFailed - beforeE.counters.dropAuthFailed,
        4,
        "another group: another traffic key",
      );
      assert.equal(afterE.counters.framesIn, 0);
      assert.ok(await d.pingable("10.0.0.2"), "the fresh plug talks to B");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "key rotation: a ping flood across vdeno reload on three hosts, a second apart, loses no packet",
  ["ping"],
  async () => {
    const { dir, paths } = makeKeys(3);
    try {
      // One key file per host, all with the same key, as copies on three machines would be.
      const first = Deno.readTextFileSync(paths[0]);
      for (const path of paths) Deno.writeTextFileSync(path, first, { mode: 0o600 });
      await using lan = await Lan.create(3);
      const hosts = lan.hosts;
      const names = ["ka", "kb", "kc"];
      for (const [k, host] of hosts.entries()) {
        await startPlug(host, names[k], `vxvde://239.6.0.10/key='${paths[k]}'`, k + 1);
      }
      for (const [k, host] of hosts.entries()) {
        assert.ok(await host.pingable(`10.0.0.${(k + 1) % 3 + 1}`));
      }
      const keyIds = async () =>
        await Promise.all(hosts.map(async (host, k) => {
          const status = await vxStatus(host, names[k]) as unknown as Record<string, string>;
          return { current: status.keyId, next: status.nextKeyId, previous: status.previousKeyId };
        }));
      const [before] = await keyIds();
      // Each host pings the next at 100 per second for 8 s; the key changes in the middle.
      const count = 800;
      const floods = hosts.map((host, k) =>
        host.run(
          ["ping", "-q", "-c", String(count), "-i", "0.01", "-W", "2", `10.0.0.${(k + 1) % 3 + 1}`],
          { timeoutMs: 60_000 },
        )
      );
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const second = newKeyText();
      for (const [k, host] of hosts.entries()) {
        Deno.writeTextFileSync(paths[k], second, { mode: 0o600 });
        const reload = await host.run([...VDENO, "reload", names[k]]);
        assert.equal(reload.code, 0, reload.stderr);
        assert.match(reload.stdout, /new key loaded/);
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      const results = await Promise.all(floods);
      const lost = results.map((result) => {
        const match = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout);
        assert.ok(match, result.stdout + result.stderr);
        return Number(match[1]) - Number(match[2]);
      });
      console.log(
        `key rotation under a ping flood: ${count} pings per host, lost ${lost.join(", ")}`,
      );
      assert.deepEqual(lost, [0, 0, 0], "no ping lost across the key change");
      const after = await keyIds();
      for (const ids of after) {
        assert.notEqual(ids.current, before.current, "sealing with the new key");
        assert.equal(ids.current, after[0].current, "the same new key everywhere");
        assert.equal(ids.next, undefined);
      }
      const again = await hosts[0].run([...VDENO, "reload", names[0]]);
      assert.match(again.stdout, /unchanged/);
      Deno.writeTextFileSync(paths[0], "not a key\n", { mode: 0o600 });
      const bad = await hosts[0].run([...VDENO, "reload", names[0]]);
      assert.equal(bad.code, 1);
      assert.match(
        bad.stderr.trim(),
        /^vdeno reload: ka: vxvde:.*: Bad key file .*expected 64 hex digits/,
      );
      assert.ok(await hosts[0].pingable("10.0.0.2"), "a bad key file leaves the plug as it was");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

hostTest(
  "vdeno reload reaches the data plane of a vdeno ns; a lone plug seals with the new key at once",
  ["unshare"],
  async () => {
    const { dir, paths: [key] } = makeKeys(1);
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      const ns = host.vdeno(["ns", `vxvde://239.6.0.11/key='${key}'`, "sleep", "60"]);
      let name: string | undefined;
      for (let tries = 0; tries < 100 && name === undefined; tries++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        const listed = await host.run([...VDENO, "status", "--json"]);
        if (listed.code !== 0) continue;
        const reports = JSON.parse(listed.stdout) as { name: string }[];
        // Another vdeno ns on the machine may be listed too: ours is the one on its group.
        name = reports.find((report) =>
          report.name.startsWith("ns-") && JSON.stringify(report).includes("239.6.0.11")
        )?.name;
      }
      assert.ok(name, `no vdeno ns plug in vdeno status: ${ns.stderr}`);
      const keyIds = async () => {
        const report = JSON.parse(await host.sh([...VDENO, "status", "--json", name!]));
        const vxvde = report.plugs.find((plug: { vnl: string }) => plug.vnl.startsWith("vxvde:"));
        return { current: vxvde.keyId, previous: vxvde.previousKeyId };
      };
      const before = await keyIds();
      Deno.writeTextFileSync(key, newKeyText(), { mode: 0o600 });
      const reload = await host.run([...VDENO, "reload", name]);
      assert.equal(reload.code, 0, reload.stderr);
      assert.match(reload.stdout, /new key loaded/);
      const after = await keyIds();
      assert.notEqual(after.current, before.current, "no member to wait for: sealing with it now");
      assert.equal(after.previous, before.current, "the old key still opens for a while");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

Deno.test("sealer: datagrams of a received run open where they arrived, frames of proven members only", () => {
  const alice = new Member(41010), bob = new Member(41011);
  for (const member of [alice, bob]) member.sealer.greet(Date.now() / 1000);
  exchange([alice, bob]);
  const frame = new Uint8Array(200).map((_, i) => (i * 7) & 0xff);
  const seen = sealFrame(alice.sealer, frame, bob.address);
  assert.equal(openDatagram(bob, seen, alice.address, false).verdict, Verdict.ok);
  const tampered = sealFrame(alice.sealer, frame, bob.address);
  tampered[SEALED_PREFIX + 50] ^= 0x10;
  const toCarol = sealFrame(alice.sealer, frame, SocketAddress.parse("127.0.0.1", 41012)!);
  const datagrams = [
    sealFrame(alice.sealer, frame, bob.address),
    seen, // a replay
    sealFrame(alice.sealer, frame, bob.address),
    tampered,
    toCarol, // misdirected
    sealFrame(alice.sealer, new Uint8Array(0), bob.address), // a goodbye: left to open()
    sealFrame(alice.sealer, frame.subarray(0, 60), bob.address), // a shorter last one
  ];
  // The run where it arrived: one batch's bytes, from an odd offset, 300 bytes apart.
  const batch = new FrameBatch(4);
  const at = 1001, stride = 300;
  datagrams.forEach((datagram, k) => batch.bytes.set(datagram, at + k * stride));
  const before = batch.bytes.slice();
  const names = new Uint8Array(SOCKADDR_SIZE);
  names.set(alice.address.bytes.subarray(0, SOCKADDR_SIZE));
  const source = { names, offset: 0, fromGroup: false };
  const now = Date.now() / 1000;
  const openAt = (k: number, sealer = bob.sealer, from = source) =>
    sealer.openInRun(batch.bytes, at, stride, k, datagrams[k].length - SEALED_PREFIX, now, from);
  const frameAt = (k: number) =>
    batch.bytes.slice(at + k * stride + SEALED_PREFIX, at + k * stride + datagrams[k].length);
  const untouched = (k: number) =>
    assert.deepEqual(
      batch.bytes.subarray(at + k * stride, at + (k + 1) * stride),
      before.subarray(at + k * stride, at + (k + 1) * stride),
      `datagram ${k} is left as it arrived`,
    );

  // From an address alice is not proven at, or by a sealer that never heard of her: nothing done.
  const elsewhere = new Uint8Array(SOCKADDR_SIZE);
  elsewhere.set(SocketAddress.parse("127.0.0.9", 41010)!.bytes.subarray(0, SOCKADDR_SIZE));
  assert.equal(openAt(0, bob.sealer, { names: elsewhere, offset: 0, fromGroup: false }), -1);
  const stranger = new Member(41013);
  assert.equal(openAt(0, stranger.sealer), -1);
  assert.equal(stranger.sealer.hasOutgoing, false, "no hello for a run left to open()");
  assert.equal(
    openAt(0, bob.sealer, { names, offset: 0, fromGroup: true }),
    -1,
    "not for the group",
  );
  untouched(0);

  assert.equal(openAt(0), Verdict.ok);
  assert.deepEqual(frameAt(0), frame);
  assert.equal(openAt(0), -1, "opened once only");
  assert.equal(openAt(1), -1, "a replay");
  untouched(1);
  assert.equal(openAt(2), Verdict.ok);
  assert.deepEqual(frameAt(2), frame);
  assert.equal(openAt(3), Verdict.forged);
  assert.equal(openAt(4), -1, "misdirected");
  untouched(4);
  assert.equal(openAt(5), -1, "a goodbye");
  untouched(5);
  assert.equal(openAt(6), Verdict.ok);
  assert.deepEqual(frameAt(6), frame.subarray(0, 60));

  // What was left goes to open() as before; what was opened in the run is seen there too.
  const opened = (k: number) =>
    openDatagram(
      bob,
      batch.bytes.slice(at + k * stride, at + k * stride + datagrams[k].length),
      alice.address,
      false,
    )
      .verdict;
  assert.equal(opened(0), Verdict.replayed);
  assert.equal(opened(1), Verdict.replayed);
  assert.equal(opened(3), Verdict.forged, "a forged datagram opened in the run stays forged");
  assert.equal(opened(4), Verdict.misdirected);
  assert.equal(opened(5), Verdict.ok, "the goodbye");
  assert.equal(bob.sealer.hasOutgoing, false);
  for (const member of [alice, bob, stranger]) member.sealer.close();
});
