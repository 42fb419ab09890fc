// Writes docs/benchmarks.md (to stdout) from one run's committed results, the folder
// scripts/bench.sh wrote (bench/results/RUN/), and nothing else: the machine comes
// from the run's manifest.json, every figure from a result file, and a missing file
// is an error, not a placeholder. bench/notes.md is appended as hand-written analysis,
// marked as such, and refused if it has a figure that does not cite a result file.
// The "Durable rooms" section (issue 9) comes from the run's d1-* to d4-* files, its
// catch-up set against the run's own scenario 2 ceiling.
// The "Presence" section (P1) appears when the run has p1-presence.json.
// The soak section appears when the run has a soak (soak-switchboard.json), or when
// --soak names another committed run that has one (a `scripts/bench.sh --soak-only`).
// Usage: node bench/summarize.js bench/results/RUN [--soak bench/results/SOAK_RUN]
"use strict";
const fs = require("fs");
const path = require("path");

const usage = "usage: node bench/summarize.js bench/results/RUN [--soak bench/results/SOAK_RUN]";
const argv = process.argv.slice(2);
const [dir] = argv;
const soakDir = argv[1] === "--soak" ? argv[2] : argv.length === 1 ? dir : null;
if (!dir || !soakDir || !(argv.length === 1 || argv.length === 3)) {
  console.error(usage);
  process.exit(2);
}
const fail = (message) => {
  console.error(`summarize: ${message}`);
  process.exit(1);
};
// The files the page is made from, in the order read: listed at its top.
const sources = [];
const load = (name, from = dir) => {
  const file = path.join(from, name);
  if (!fs.existsSync(file)) fail(`${file} is missing: the page is made from a complete run only`);
  sources.push({ from, name });
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    return fail(`${file}: ${e.message}`);
  }
};
const ms = (us) => (us / 1000).toFixed(2);
const num = (n) => (n == null || Number.isNaN(n) ? "n/a" : Math.round(n).toLocaleString("en-US"));
// A factor of at least 1, readable at any size: 1.32, 9.3, 1,700.
const factor = (k) => (k >= 100 ? Math.round(k).toLocaleString("en-US") : k >= 10 ? k.toFixed(1) : k.toFixed(2));
// The peers Switchboard is compared with, in the order of their columns: the label
// (and result-file suffix) loadgen ran them under, and the name the page gives them.
const PEERS = [
  { key: "socketio", name: "Socket.IO" },
  { key: "socketioxide", name: "socketioxide" },
];
// "Socket.IO 1,700× slower": names the side with the larger figure and by how much,
// so a ratio reads the same way in both directions (never "0.00×"). `peer` names the
// other side (Socket.IO unless given).
const compare = (sb, other, word, peer = "Socket.IO") => {
  if (sb == null || other == null) return "n/a";
  if (sb === other) return "equal";
  const [big, small, who] = sb > other ? [sb, other, "Switchboard"] : [other, sb, peer];
  if (small <= 0) return `${who} ${word} (other: 0)`;
  return `${who} ${factor(big / small)}× ${word}`;
};
// One comparison cell per peer: Switchboard against each, in PEERS order.
const compareAll = (sb, others, word) => others.map((o, i) => compare(sb, o, word, PEERS[i].name));
const vsHeads = PEERS.map((peer) => `Switchboard vs ${peer.name}`);
// "0.76× redis-benchmark (redis-benchmark 1.32× more)": a ratio to a reference that
// still reads when it is far below 1.
const times = (r, name) => {
  if (r == null) return "n/a";
  if (r >= 1) return `${factor(r)}× ${name}`;
  if (r <= 0) return `0 (${name}: more)`;
  return `${r.toPrecision(2)}× ${name} (${name} ${factor(1 / r)}× more)`;
};
const verdict = (ok) => (ok ? "**met**" : "**missed**");
const out = [];
const p = (line = "") => out.push(line);

const manifest = load("manifest.json");
const m = manifest.machine;
const v = manifest.versions;
p("Numbers from one run of `scripts/bench.sh`, Switchboard and two peers, Socket.IO (Node)");
p("and socketioxide (Rust), side by side in the same run, on the machine below. Latency is");
p("publish-to-receive, measured from the *scheduled* send time (fixed timetable, so");
p("coordinated omission cannot flatter it), in milliseconds. Each comparison column sets");
p("Switchboard against one peer and names the side with the larger figure and by how much");
p("(\"Socket.IO 3.2× slower\", \"Switchboard 9.3× more\").");
p();
p("## Machine");
p();
p(`- CPU: ${m.cores} cores, ${m.cpu}`);
p(`- RAM: ${m.ram_gib} GiB; kernel ${m.kernel}; open files ${m.open_files}`);
p(`- ${v.rustc}; node ${v.node}; ${v.redis}`);
const version = (name) => v[name] || fail(`manifest.json has no version of ${name}`);
p(`- Socket.IO peer: socket.io ${version("socket.io")}, @socket.io/redis-adapter ${version("@socket.io/redis-adapter")}, two nodes on their own Redis`);
p(`- socketioxide peer (\`bench/peers/socketioxide\`, one tokio thread per node): socketioxide ${version("socketioxide")}, socketioxide-redis ${version("socketioxide-redis")}, two nodes on their own Redis`);
p("- Everything (Redis, both servers of each kind, the load generator) on this one machine.");
p();
p(`Command: \`${manifest.command}\`, at commit \`${manifest.commit}\`, started ${manifest.started}; loadgen commands are in each result's \`command\` field.`);
p();

// One phase of scenario 1: a column per system, then one comparison column per peer.
const phaseTable = (sb, peers, label) => {
  p(`| ${label} | Switchboard | ${PEERS.map((x) => x.name).join(" | ")} | ${vsHeads.join(" | ")} |`);
  p(`| --- | --- | ${PEERS.map(() => "---").join(" | ")} | ${vsHeads.map(() => "---").join(" | ")} |`);
  const blanks = vsHeads.map(() => "").join(" | ");
  const rows = [
    ["deliveries/s", (r) => r.deliveries_per_s, num, "more"],
    ["p50 ms", (r) => r.latency_us.p50, ms, "slower"],
    ["p90 ms", (r) => r.latency_us.p90, ms, "slower"],
    ["p99 ms", (r) => r.latency_us.p99, ms, "slower"],
    ["p99.9 ms", (r) => r.latency_us.p999, ms, "slower"],
    ["max ms", (r) => r.latency_us.max, ms, "slower"],
    ["cross-server p99 ms", (r) => r.cross_server_latency_us.p99, ms, "slower"],
    ["load generator's send lag p99 ms", (r) => (r.send_lag_us ? r.send_lag_us.p99 : null), ms, "later"],
    ["lost / dup / reordered", null],
    ["server CPU % (node A / B)", null],
  ];
  for (const [name, f, fmt, word] of rows) {
    if (name.startsWith("lost")) {
      const cell = (r) => (r ? `${r.lost} / ${r.duplicated} / ${r.reordered}` : "n/a");
      p(`| ${name} | ${[sb, ...peers].map(cell).join(" | ")} | ${blanks} |`);
    } else if (name.startsWith("server CPU")) {
      const cell = (r) => (r ? r.servers.map((s) => s.cpu_percent.toFixed(0)).join(" / ") : "n/a");
      p(`| ${name} | ${[sb, ...peers].map(cell).join(" | ")} | ${blanks} |`);
    } else {
      const [a, ...others] = [sb, ...peers].map((r) => (r ? f(r) : null));
      if (a == null && others.every((b) => b == null)) continue;
      const cells = [a, ...others].map((x) => (x == null ? "n/a" : fmt(x)));
      p(`| ${name} | ${cells.join(" | ")} | ${compareAll(a, others, word).join(" | ")} |`);
    }
  }
  p();
};

// Scenario 1
const s1sb = load("s1-latency-switchboard.json");
const s1peers = PEERS.map((peer) => load(`s1-latency-${peer.key}.json`));
p(`## 1. Latency: ${num(s1sb.clients)} subscribers over ${num(s1sb.rooms)} rooms, ${s1sb.servers.length} servers`);
p();
p(`${num(s1sb.publishers)} publishers (spread over the servers) publish round-robin over the rooms;`);
p("each room's subscribers alternate between the servers, so deliveries cross Redis");
p("for the subscribers not on their publisher's server. The issue asks for 1k and 10k");
p("publishes/s; the rates between show where the tail bends. The");
p("load generator's *send lag* is how late it sent publishes against its timetable");
p("(a timerfd per publisher): it is inside every latency figure, and it is not the");
p("server's.");
p();
let s1target = null;
let s1knee = null;
for (const rate of s1sb.phases.map((ph) => ph.offered_publishes_per_s)) {
  const find = (r) =>
    r.phases.find((ph) => ph.offered_publishes_per_s === rate) ||
    fail(`${r.label}'s scenario 1 result has no phase at ${rate}/s`);
  const sb = find(s1sb);
  p(`### ${num(rate)} publishes/s`);
  p();
  phaseTable(sb, s1peers.map(find), `${num(rate)} pub/s`);
  if (rate === 10000) s1target = sb;
  if (sb.cross_server_latency_us.p99 <= 2000) s1knee = rate;
}
if (!s1target) fail("scenario 1 has no phase at 10,000 publishes/s, the target's rate");
const clean = (runs) =>
  runs.filter(Boolean).every((r) => (r.phases || []).every((ph) => ph.lost === 0 && ph.duplicated === 0 && ph.reordered === 0));

// Scenario 2
p("## 2. Fan-out: the highest sustained event rate into one room");
p();
p("Publish rate ramps up ×1.25 a step (phases of a few seconds) until a phase is not");
p("sustained: nothing lost, duplicated or reordered, no client closed (slow consumer),");
p("the last delivery within 0.5 s of the last scheduled publish, p99 under 250 ms.");
p("Two publishers, one per server; subscribers alternate between the servers.");
p();
p("The ceiling is the highest sustained phase of the ramp; next to it, that phase's p99:");
p("what each delivery waited at the ceiling.");
p();
const fanHeads = ["Switchboard", ...PEERS.map((x) => x.name)].map((who) => `${who} deliveries/s (pub/s) | p99 ms`);
p(`| room | ${fanHeads.join(" | ")} | ${vsHeads.join(" | ")} |`);
p(`| --- | ${fanHeads.map(() => "--- | ---").join(" | ")} | ${vsHeads.map(() => "---").join(" | ")} |`);
const fan = {};
for (const size of [1000, 5000]) {
  const sb = load(`s2-fanout-${size}-switchboard.json`);
  const peers = PEERS.map((peer) => load(`s2-fanout-${size}-${peer.key}.json`));
  fan[size] = { sb, io: peers[PEERS.findIndex((x) => x.key === "socketio")], peers };
  const max = (r) => (r ? r.max_sustained_deliveries_per_s : null);
  const ceiling = (r) =>
    r && r.max_sustained_deliveries_per_s != null
      ? [`${num(r.max_sustained_deliveries_per_s)} (${num(r.max_sustained_publishes_per_s)})`, ms(r.max_sustained_p99_us)]
      : ["none sustained", "n/a"];
  const cells = [sb, ...peers].map((r) => ceiling(r).join(" | "));
  p(`| ${num(size)} subscribers | ${cells.join(" | ")} | ${compareAll(max(sb), peers.map(max), "more").join(" | ")} |`);
}
p();
p("Every phase of each ramp (the last one is the first that was not sustained):");
p();
p("| run | pub/s | deliveries/s | p50 ms | p99 ms | max ms | lag ms | CPU % A/B | sustained |");
p("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const size of [1000, 5000]) {
  const runs = [["Switchboard", fan[size].sb], ...PEERS.map((peer, i) => [peer.name, fan[size].peers[i]])];
  for (const [who, r] of runs) {
    if (!r) continue;
    for (const ph of r.phases) {
      p(`| ${who} ${size} | ${num(ph.offered_publishes_per_s)} | ${num(ph.deliveries_per_s)} | ${ms(ph.latency_us.p50)} | ${ms(ph.latency_us.p99)} | ${ms(ph.latency_us.max)} | ${num(ph.drain_lag_ms)} | ${ph.servers.map((s) => s.cpu_percent.toFixed(0)).join("/")} | ${ph.sustained ? "yes" : "no: " + ph.not_sustained_because.join(", ")} |`);
    }
  }
}
p();
p("![latency against offered rate, 1,000-subscriber room](benchmarks-latency.svg)");
p();

// Scenario 3
const s3sb = load("s3-idle-switchboard.json");
const s3peers = PEERS.map((peer) => load(`s3-idle-${peer.key}.json`));
const s3bare = load("s3-idle-bare.json");
const perConn = (r) => (r && r.idle ? r.idle.per_connection_bytes : null);
p("## 3. Connections: 20,000 idle subscribed connections over two servers");
p();
p("Fresh servers; RSS (VmRSS) before connecting and 5 s after every client subscribed");
p("(to one of 1,000 rooms), divided by the connections on that server.");
p();
p(`| | Switchboard | ${PEERS.map((x) => x.name).join(" | ")} | ${vsHeads.join(" | ")} | bare actix-web-actors session |`);
p(`| --- | --- | ${PEERS.map(() => "---").join(" | ")} | ${vsHeads.map(() => "---").join(" | ")} | --- |`);
const kib = (b) => (b == null ? "n/a" : (b / 1024).toFixed(1) + " KiB");
const perConnPeers = s3peers.map(perConn);
p(`| RSS per connection | ${[perConn(s3sb), ...perConnPeers].map(kib).join(" | ")} | ${compareAll(perConn(s3sb), perConnPeers, "more").join(" | ")} | ${kib(perConn(s3bare))} |`);
const connected = (r) => (r ? `${r.connect.subscribed} in ${r.connect.seconds.toFixed(1)} s (${r.connect.failed} failed)` : "n/a");
p(`| subscribed connections | ${[s3sb, ...s3peers].map(connected).join(" | ")} | ${vsHeads.map(() => "").join(" | ")} | ${connected(s3bare)} |`);
p();

// Scenario 4
const s4 = load("s4-publish-path.json");
const rb = load("s4-redis-benchmark.json");
const rbRate = rb.requests_per_s;
const rbCmd = rb.command;
p("## 4. Publish path: in-process service → broker → Redis");
p();
p(`\`PubSub::publish_to\` with ${s4 ? s4.concurrency : "n/a"} publishes in flight for ${s4 ? s4.seconds.toFixed(1) : "n/a"} s, beside \`${rbCmd}\` on the same Redis in the same run.`);
p();
p("| Switchboard events/s | redis-benchmark PUBLISH -P 16 requests/s | Switchboard ÷ redis-benchmark |");
p("| --- | --- | --- |");
p(`| ${num(s4 && s4.events_per_s)} | ${num(rbRate)} | ${times(s4 && rbRate ? s4.events_per_s / rbRate : null, "redis-benchmark")} |`);
p();

// Durable rooms (issue 9): their own Redis and servers, plain and durable rooms side
// by side on them; the catch-up is set against scenario 2's ceiling above.
const d1 = { plain: load("d1-publish-path-plain.json"), durable: load("d1-publish-path-durable.json") };
const d2 = { plain: load("d2-latency-plain.json"), durable: load("d2-latency-durable.json") };
const d3 = load("d3-catch-up.json");
const d4 = load("d4-storm.json");
const d2phase = (r) => r.phases[0] || fail(`${r.label}'s D2 result has no phase`);
const [d2p, d2d] = [d2phase(d2.plain), d2phase(d2.durable)];
const d1ratio = d1.plain.events_per_s ? d1.durable.events_per_s / d1.plain.events_per_s : null;
const d2diff = d2d.cross_server_latency_us.p99 - d2p.cross_server_latency_us.p99;
const ceiling1000 = fan[1000].sb.max_sustained_deliveries_per_s;
const d3ratio = ceiling1000 && d3.deliveries_per_s ? d3.deliveries_per_s / ceiling1000 : null;
const d3clean = d3.deliveries === d3.expected_deliveries && d3.missing === 0 && d3.duplicated === 0 && d3.gaps === 0 && d3.disconnected === 0;
const d4clean = d4.recovered === d4.clients && d4.live === d4.clients && d4.failed === 0 && d4.replayed === d4.expected_replayed && d4.missing === 0 && d4.duplicated === 0 && d4.gaps === 0;
const signedMs = (us) => `${us >= 0 ? "+" : "−"}${ms(Math.abs(us))}`;
p("## 5. Durable rooms");
p();
p("Switchboard alone, on a Redis and two servers of its own started with");
p("`DURABLE_ROOMS=dur:*`: rooms named `dur:...` are durable (numbered by the publish");
p("script, kept in a list), every other room is plain, so plain and durable rooms");
p("are measured on the same servers, one after the other.");
p();
p("### D1. Publish path into a durable room");
p();
p(`Scenario 4's in-process \`PubSub::publish_to\`, ${d1.durable.concurrency} publishes in flight for ${d1.durable.seconds.toFixed(1)} s, into a`);
p("plain room and then into a durable one (`--durable`: each publish is the numbering");
p("script instead of a `PUBLISH`), on the same Redis.");
p();
p("| plain room events/s | durable room events/s | durable ÷ plain | failed (plain / durable) |");
p("| --- | --- | --- | --- |");
p(`| ${num(d1.plain.events_per_s)} | ${num(d1.durable.events_per_s)} | ${times(d1ratio, "plain")} | ${d1.plain.failed} / ${d1.durable.failed} |`);
p();
p(`### D2. Latency at ${num(d2d.offered_publishes_per_s)} publishes/s, plain and durable rooms`);
p();
p(`Scenario 1's shape (${num(d2.durable.clients)} subscribers over ${num(d2.durable.rooms)} rooms, ${num(d2.durable.publishers)} publishers spread over both`);
p("servers, subscribers alternating between them), plain rooms then durable rooms.");
p("A durable publish is not local first: every delivery, on the publisher's server too,");
p("comes through Redis after the script; the cross-server row compares like with like.");
p();
p("| | plain rooms | durable rooms | durable − plain | |");
p("| --- | --- | --- | --- | --- |");
const d2rows = [
  ["deliveries/s", (ph) => ph.deliveries_per_s, num, null, "more"],
  ["p50 ms", (ph) => ph.latency_us.p50, ms, signedMs, "slower"],
  ["p99 ms", (ph) => ph.latency_us.p99, ms, signedMs, "slower"],
  ["p99.9 ms", (ph) => ph.latency_us.p999, ms, signedMs, "slower"],
  ["max ms", (ph) => ph.latency_us.max, ms, signedMs, "slower"],
  ["cross-server p99 ms", (ph) => ph.cross_server_latency_us.p99, ms, signedMs, "slower"],
  ["load generator's send lag p99 ms", (ph) => ph.send_lag_us.p99, ms, signedMs, "later"],
];
for (const [name, f, fmt, diff, word] of d2rows) {
  const [a, b] = [f(d2p), f(d2d)];
  const cmp = compare(a, b, word, "durable").replace(/^Switchboard/, "plain");
  p(`| ${name} | ${fmt(a)} | ${fmt(b)} | ${diff ? diff(b - a) : ""} | ${cmp} |`);
}
p(`| lost / dup / reordered | ${d2p.lost} / ${d2p.duplicated} / ${d2p.reordered} | ${d2d.lost} / ${d2d.duplicated} / ${d2d.reordered} | | |`);
p(`| server CPU % (node A / B) | ${d2p.servers.map((x) => x.cpu_percent.toFixed(0)).join(" / ")} | ${d2d.servers.map((x) => x.cpu_percent.toFixed(0)).join(" / ")} | | |`);
p();
p("### D3. Catch-up after a blip");
p();
p(`${num(d3.subscribed)} subscribers in one durable room, all on one server whose Redis link runs through a proxy`);
p(`(\`switchboard-loadgen proxy\`). The proxy cuts the link; once \`PUBSUB NUMSUB\` shows nobody subscribed to the`);
p(`room, ${num(d3.events)} events are published through the other server (${(d3.publish_s * 1000).toFixed(0)} ms), and \`PUBSUB NUMSUB\` is`);
p("checked again (still nobody), so every one of them was missed; then the proxy lets the link back.");
p("The server reconnects after its backoff, reads the room's history from the last offset it");
p("delivered, and delivers the missed events to every subscriber.");
p();
p("**What is timed**: from the first delivery of a missed event at any subscriber to the last");
p("delivery at any subscriber; the rate is the distinct deliveries over that time. The reconnect");
p("backoff and the history read before the first delivery are not in it: they are the");
p("\"restore → first\" column. It is set against scenario 2's ceiling for a 1,000-subscriber room");
p("in this run, which spreads its subscribers over two servers where this puts them on one.");
p();
p("| deliveries (owed) | restore → first ms | first → last ms | catch-up deliveries/s | scenario 2 ceiling deliveries/s | catch-up ÷ ceiling | per subscriber, restore → caught up p50 / p99 ms | missing / dup / gaps / closed |");
p("| --- | --- | --- | --- | --- | --- | --- | --- |");
p(`| ${num(d3.deliveries)} (${num(d3.expected_deliveries)}) | ${d3.restored_to_first_ms.toFixed(1)} | ${d3.first_to_last_ms.toFixed(1)} | ${num(d3.deliveries_per_s)} | ${ceiling1000 == null ? "none sustained" : num(ceiling1000)} | ${times(d3ratio, "the ceiling")} | ${ms(d3.client_caught_up_us.p50)} / ${ms(d3.client_caught_up_us.p99)} | ${d3.missing} / ${d3.duplicated} / ${d3.gaps} / ${d3.disconnected} |`);
p();
p("### D4. Recovery storm");
p();
p(`${num(d4.clients)} clients (alternating between the two servers) subscribe to one of ${d4.rooms} durable rooms, note the`);
p(`reply's offset and epoch, and leave; ${num(d4.missed)} events are published in each room; then every client`);
p("connects again at once and subscribes with `since`, while a live event is published in each");
p(`room every ${num(d4.live_every_ms)} ms from the storm's start. A client is live when, its offsets contiguous from`);
p("`since`, it has an event published after the start. **What is timed**: from the start (all");
p("connects issued together, no limit) to each client's `subscribed` reply and to it being live;");
p("the storm's length is the last client live.");
p();
p("| clients | recovered: true / false | failed / closed | live | replayed (owed) | missing / dup / gaps | to subscribed p50 / p99 ms | to live p50 / p99 / max ms | storm s |");
p("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
p(`| ${num(d4.clients)} | ${num(d4.recovered)} / ${num(d4.not_recovered)} | ${d4.failed} / ${d4.disconnected} | ${num(d4.live)} | ${num(d4.replayed)} (${num(d4.expected_replayed)}) | ${d4.missing} / ${d4.duplicated} / ${d4.gaps} | ${ms(d4.subscribed_us.p50)} / ${ms(d4.subscribed_us.p99)} | ${ms(d4.live_us.p50)} / ${ms(d4.live_us.p99)} / ${ms(d4.live_us.max)} | ${d4.storm_s.toFixed(2)} |`);
p();

// Presence (P1), when the run has it: its own Redis and servers.
const presenceFile = path.join(dir, "p1-presence.json");
const p1 = fs.existsSync(presenceFile) ? load("p1-presence.json") : null;
if (p1) {
  p("## 6. Presence");
  p();
  p("Switchboard alone, on a Redis and two servers of its own started with `PRESENCE_ROOMS=pres:*`.");
  p(`${num(p1.members)} members (alternating between the ${p1.servers.length} servers, at most ${num(p1.connect_concurrency)} connecting at once) subscribe`);
  p("to one presence room, each reading the `join` frames of the members after it. **Join**: from the");
  p("first connect until `presence_count` on every server counts every member. Once no member has");
  p(`received a frame for a second, ${num(p1.rounds)} rounds of reads, one read at a time and the servers in turn, each`);
  p("timed from the request to the whole answer: a WebSocket `presence` (the member list), a");
  p("`presence_count`, and an HTTP `GET /presence/{room}` on a connection of its own; every answer must");
  p("list (or count) every member. **Leave**: every member closes at once; from then until");
  p("`presence_count` is 0 on every server.");
  p();
  p("| members | join s (all subscribed s) | join frames delivered (s after the join) | closed by a server / slow-consumer closes joining, leaving | answers not listing every member | leave s |");
  p("| --- | --- | --- | --- | --- | --- |");
  p(`| ${num(p1.members)} | ${p1.join_s.toFixed(2)} (${p1.subscribed_s.toFixed(2)}) | ${num(p1.join_frames)} (${p1.settle_s.toFixed(2)}) | ${num(p1.closed_by_server)} / ${num(p1.slow_consumer_closes)}, ${num(p1.slow_consumer_closes_leaving)} | ${num(p1.wrong_answers)} | ${p1.leave_s.toFixed(2)} |`);
  p();
  p("| read | reads | p50 ms | p99 ms | max ms | answer bytes | members listed (fewest) |");
  p("| --- | --- | --- | --- | --- | --- | --- |");
  for (const [name, r] of [
    ["WebSocket `presence`", p1.ws_presence],
    ["WebSocket `presence_count`", p1.ws_presence_count],
    ["HTTP `GET /presence/{room}`", p1.http_presence],
  ]) {
    const l = r.latency_us;
    p(`| ${name} | ${num(l.count)} | ${ms(l.p50)} | ${ms(l.p99)} | ${ms(l.max)} | ${num(r.bytes)} | ${num(r.members)} |`);
  }
  p();
}

// The soak, when there is one.
const soakFile = path.join(soakDir, "soak-switchboard.json");
const soakAsked = soakDir !== dir;
const soak = soakAsked || fs.existsSync(soakFile) ? load("soak-switchboard.json", soakDir) : null;
const GROWTH_TARGET_KIB_PER_HOUR = 1024;
let soakOk = null;
if (soak) {
  if (!soak.rss) fail(`${soakFile} has no RSS trace (it was not run with --rss-every)`);
  const ph = soak.phases[0] || fail(`${soakFile} has no phase`);
  const minutes = ph.duration_s / 60;
  const chartFile = path.join(soakDir, "soak-rss.svg");
  if (!fs.existsSync(chartFile)) fail(`${chartFile} is missing (bench.sh draws it after the soak)`);
  const chart = path.relative(path.join(__dirname, "..", "docs"), path.resolve(chartFile));
  p("## Soak: memory under steady load");
  p();
  p(`${soak.servers.length} Switchboard servers on one Redis, ${num(soak.clients)} subscribers in ${num(soak.rooms)} rooms, ` +
    `${num(ph.offered_publishes_per_s)} events/s from ${num(soak.publishers)} publishers for ${minutes.toFixed(1)} minutes ` +
    `(${num(ph.delivered)} deliveries; lost / dup / reordered ${ph.lost} / ${ph.duplicated} / ${ph.reordered}; ` +
    `p50 ${ms(ph.latency_us.p50)} ms, p99 ${ms(ph.latency_us.p99)} ms). Each server's RSS was read from \`/proc\` every ` +
    `${num(soak.rss.every_s)} s; growth is the least-squares slope of the readings after a ` +
    `${(soak.rss.warmup_s / 60).toFixed(1)}-minute warm-up. Target: under 1 MiB per hour.`);
  p();
  const soakManifest = soakAsked ? load("manifest.json", soakDir) : manifest;
  p(`Soak run \`${soakManifest.run}\` (\`${soakManifest.command}\`), at commit \`${soakManifest.commit}\`, ` +
    `started ${soakManifest.started}; results in \`${path.relative(path.join(__dirname, ".."), path.resolve(soakDir))}\`.`);
  p();
  p("| server | first RSS | RSS at the end of the warm-up | last RSS | readings after the warm-up | growth after the warm-up | |");
  p("| --- | --- | --- | --- | --- | --- | --- |");
  soakOk = true;
  soak.rss.servers.forEach((server, i) => {
    const after = server.samples.filter((x) => x.t_s >= soak.rss.warmup_s);
    const first = server.samples[0];
    const last = server.samples[server.samples.length - 1];
    const g = server.growth_kib_per_hour;
    const ok = g != null && g < GROWTH_TARGET_KIB_PER_HOUR;
    soakOk = soakOk && ok;
    const rss = (x) => (x ? `${num(x.rss_kib)} KiB` : "none");
    p(`| ${i + 1} (pid ${server.pid}) | ${rss(first)} | ${rss(after[0])} | ${rss(last)} | ${after.length} | ` +
      `${g == null ? "too few readings" : `${num(g)} KiB/hour`} | ${verdict(ok)} |`);
  });
  p();
  p(`![RSS of each server over the soak](${chart})`);
  p();
}

// Targets
p("## Targets");
p();
p("| target | figure | |");
p("| --- | --- | --- |");
const x1 = s1target ? s1target.cross_server_latency_us.p99 : null;
p(`| cross-server p99 ≤ 2 ms at 10k publishes/s | ${x1 == null ? "n/a" : ms(x1) + " ms"}${s1knee ? ` (≤ 2 ms up to ${num(s1knee)}/s)` : ""} | ${verdict(x1 != null && x1 <= 2000)} |`);
const f1 = fan[1000];
const fr = f1.sb && f1.io && f1.io.max_sustained_deliveries_per_s
  ? f1.sb.max_sustained_deliveries_per_s / f1.io.max_sustained_deliveries_per_s
  : null;
p(`| fan-out ≥ 3× Socket.IO (1,000-subscriber room) | ${times(fr, "Socket.IO")} | ${verdict(fr != null && fr >= 3)} |`);
const c = perConn(s3sb);
p(`| ≤ 16 KiB RSS per idle subscribed connection | ${kib(c)} (floor ${kib(perConn(s3bare))}) | ${verdict(c != null && c <= 16384)} |`);
const pr = s4 && rbRate ? s4.events_per_s / rbRate : null;
p(`| in-process publish ≥ ½ redis-benchmark | ${times(pr, "redis-benchmark")} | ${verdict(pr != null && pr >= 0.5)} |`);
const sbRuns = [s1sb, f1.sb, fan[5000].sb];
const sbClean = sbRuns.every((r) => r && r.phases.every((ph) => ph.sustained || ph === r.phases[r.phases.length - 1]))
  && clean([s1sb]);
p(`| durable publish path ≥ ½ plain (D1) | ${times(d1ratio, "plain")} | ${verdict(d1ratio != null && d1ratio >= 0.5)} |`);
p(`| durable cross-server p99 within 0.5 ms of plain at ${num(d2d.offered_publishes_per_s)}/s (D2) | ${ms(d2d.cross_server_latency_us.p99)} ms against ${ms(d2p.cross_server_latency_us.p99)} ms (${signedMs(d2diff)} ms) | ${verdict(d2diff <= 500 && d2d.lost === 0)} |`);
p(`| catch-up ≥ ½ the sustained fan-out (D3) | ${times(d3ratio, "the ceiling")}${d3clean ? "" : ", not every delivery clean"} | ${verdict(d3ratio != null && d3ratio >= 0.5 && d3clean)} |`);
p(`| recovery storm: every client recovered:true and live (D4) | ${num(d4.recovered)} of ${num(d4.clients)} recovered, ${num(d4.live)} live, the last after ${d4.storm_s.toFixed(2)} s | ${verdict(d4clean)} |`);
if (soak) {
  p(`| soak: RSS growth after the warm-up under 1 MiB/hour | ${soak.rss.servers.map((x) => (x.growth_kib_per_hour == null ? "n/a" : num(x.growth_kib_per_hour))).join(" / ")} KiB/hour | ${verdict(soakOk)} |`);
}
p(`| zero lost/dup/reordered without faults | ${sbClean ? "none in scenario 1 or in any sustained phase" : "see the tables"} | ${verdict(sbClean)} |`);
p();
p("Scenario 2's last phase of each ramp is the overload that ends it; losses there");
p("are the definition of \"not sustained\", not a fault.");
p();
// The hand-written analysis. A figure in it must be one a committed result holds, so
// every paragraph or list item with a number must name the result file it is from
// (file names, code spans, percentile names and "scenario N" are not figures).
const notesFile = path.join(__dirname, "notes.md");
const notes = fs.readFileSync(notesFile, "utf8").trim();
for (const block of notes.split(/\n(?=\s*\n|\s*- )/)) {
  const bare = block
    .replace(/`[^`]*`/g, "")
    .replace(/[\w.-]+\.(json|rs|js|sh|md)\b/g, "")
    .replace(/\bp(50|90|99|99\.9)\b/g, "")
    .replace(/\bscenario \d\b/gi, "")
    .replace(/^#+ .*$/gm, "");
  if (/\d/.test(bare) && !/[\w-]+\.json/.test(block)) {
    fail(`bench/notes.md has a figure that cites no result file:\n${block.trim()}`);
  }
}
p("## Analysis (hand-written)");
p();
p("> Written by hand in `bench/notes.md`, not generated: it explains the tables above.");
p("> Any figure in it names the committed result file it comes from.");
p();
p(notes.replace(/^## /gm, "### "));
p();

const repo = path.join(__dirname, "..");
const shown = (d) => path.relative(repo, path.resolve(d));
const header = [
  "# Benchmarks",
  "",
  `Generated by \`bench/summarize.js\` from the committed results of run \`${manifest.run}\`,`,
  `in [\`${shown(dir)}/\`](../${shown(dir)}/)` +
    (soakAsked ? ` (the soak from [\`${shown(soakDir)}/\`](../${shown(soakDir)}/))` : "") +
    ", and from nothing else:",
  sources.map((f) => `\`${f.from === dir ? f.name : path.join(shown(f.from), f.name)}\``).join(", ") + ".",
  "The section marked hand-written is `bench/notes.md`.",
  "",
];
process.stdout.write(header.concat(out).join("\n") + "\n");
