// Writes (to stdout) bench/results/RUN/manifest.json: what ran, from which commit, on
// which machine. Recorded at run time so that the page made later from the committed
// results describes the machine the run had, not the one summarize.js runs on.
// Usage: node bench/manifest.js RUN_ID "COMMAND"
"use strict";
const { execSync } = require("child_process");
const fs = require("fs");
const path = require("path");

const [run, command] = process.argv.slice(2);
if (!run || !command) {
  console.error("usage: node bench/manifest.js RUN_ID COMMAND");
  process.exit(2);
}
const sh = (cmd) => execSync(cmd, { encoding: "utf8", shell: "/bin/bash" }).trim();
// The Socket.IO peer's versions, or null where it is not installed (a soak-only run).
const peer = (pkg) => {
  try {
    return require(`./peers/socketio/node_modules/${pkg}/package.json`).version;
  } catch (e) {
    return null;
  }
};
// The socketioxide peer's versions, as its Cargo.lock pins them (run.sh builds it with
// --locked), or null where the lock has no such package.
const cargoLock = (() => {
  try {
    return fs.readFileSync(path.join(__dirname, "peers/socketioxide/Cargo.lock"), "utf8");
  } catch (e) {
    return "";
  }
})();
const locked = (crate) => {
  for (const block of cargoLock.split("[[package]]")) {
    const name = /^name = "([^"]*)"$/m.exec(block);
    const version = /^version = "([^"]*)"$/m.exec(block);
    if (name && version && name[1] === crate) return version[1];
  }
  return null;
};
const dirty = sh("git status --porcelain --untracked-files=no") !== "";
const manifest = {
  run,
  command,
  started: new Date().toISOString(),
  commit: sh("git rev-parse HEAD") + (dirty ? " (with uncommitted changes)" : ""),
  machine: {
    cores: Number(sh("nproc")),
    cpu: sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
    ram_gib: Number(sh("free -g | awk '/Mem:/ {print $2}'")),
    kernel: sh("uname -r"),
    open_files: sh("ulimit -n"),
  },
  versions: {
    rustc: sh("rustc --version"),
    node: process.version,
    redis: sh("redis-server --version | cut -d' ' -f1-3"),
    "socket.io": peer("socket.io"),
    "@socket.io/redis-adapter": peer("@socket.io/redis-adapter"),
    socketioxide: locked("socketioxide"),
    "socketioxide-redis": locked("socketioxide-redis"),
  },
};
process.stdout.write(JSON.stringify(manifest) + "\n");
