// Node's peer of bench/http_bench.lua: n GETs with `conc` in flight on a keep-alive agent.
// usage: node bench/http_node_client.js <port> <n> <conc>
const http = require("http");
const [port, n, conc] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: conc });
function get() {
  return new Promise((resolve, reject) => {
    http.get({ host: "127.0.0.1", port, path: "/", agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve(Buffer.concat(chunks).length));
    }).on("error", reject);
  });
}
async function worker(count) { for (let i = 0; i < count; i++) await get(); }
(async () => {
  await worker(50);  // warm-up: open the connections
  const t0 = process.hrtime.bigint();
  const per = Math.floor(n / conc), jobs = [];
  for (let w = 0; w < conc; w++) jobs.push(worker(per));
  await Promise.all(jobs);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ peer: "node", workload: "http_get", n: per * conc, conc,
                               seconds: s, ops_per_s: (per * conc) / s }));
  agent.destroy();
})();
