// The peer of bench/mcp_bench.lua: a bare MCP client in Node (no SDK, our own code) against
// the same server-everything, the same workloads: n sequential `echo` calls, then n calls
// with 16 in flight, after a warm-up of 100 calls; one JSON line per workload.
//   node bench/mcp_node_client.js [n]        (run from the repository root)
"use strict";
const { spawn } = require("child_process");
const path = require("path");

const n = parseInt(process.argv[2] || "1000", 10);
const server = path.join(__dirname, "..", "spec/fixtures/mcp/node_modules/@modelcontextprotocol",
                         "server-everything/dist/index.js");
const child = spawn("node", [server, "stdio"], { stdio: ["pipe", "pipe", "ignore"] });

let nextId = 1;
const pending = new Map();
let buf = "";
child.stdout.setEncoding("utf8");
child.stdout.on("data", (chunk) => {
  buf += chunk;
  let nl;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    if (!line.trim()) continue;
    let msg;
    try { msg = JSON.parse(line); } catch { continue; }
    if (msg.id !== undefined && msg.method === undefined) {
      const p = pending.get(msg.id);
      if (p) { pending.delete(msg.id); msg.error ? p.reject(new Error(msg.error.message)) : p.resolve(msg.result); }
    }
  }
});

function request(method, params) {
  const id = nextId++;
  child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}
const echo = async () => {
  const r = await request("tools/call", { name: "echo", arguments: { message: "hello" } });
  if (r.isError) throw new Error("echo failed");
};
async function sequential(count) { for (let i = 0; i < count; i++) await echo(); }
async function parallel(count, width) {
  const workers = [];
  for (let w = 0; w < width; w++) {
    const mine = Math.floor(count / width) + (w < count % width ? 1 : 0);
    workers.push((async () => { for (let i = 0; i < mine; i++) await echo(); })());
  }
  await Promise.all(workers);
}
// ms: wall time; cpu_ms: this client's CPU time (user + system), the server's excluded.
const report = (workload, ms, cpu) =>
  console.log(JSON.stringify({ impl: "node", workload, n, ms, cpu_ms: (cpu.user + cpu.system) / 1000 }));

(async () => {
  await request("initialize", { protocolVersion: "2025-11-25", capabilities: {},
                                clientInfo: { name: "bare-node", version: "1" } });
  child.stdin.write(JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) + "\n");
  await sequential(100);
  let t0 = performance.now(), c0 = process.cpuUsage();
  await sequential(n);
  report("echo_sequential", performance.now() - t0, process.cpuUsage(c0));
  t0 = performance.now(); c0 = process.cpuUsage();
  await parallel(n, 16);
  report("echo_16_in_flight", performance.now() - t0, process.cpuUsage(c0));
  child.stdin.end();
  child.kill("SIGTERM");
})();
