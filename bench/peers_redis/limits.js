// The peers of bench/redis_limits_run.sh, on the same private redis-server as baton's side
// (bench/redis_limits.lua): node limits.js <port> <peer> <workload> <n> <conc>
//   peer bottleneck, workload lease: Bottleneck in clustering mode (datastore "ioredis"),
//     maxConcurrent = conc, n jobs scheduled by conc loops: each job is Bottleneck's
//     acquire (submit + register) and release (free) of a slot, its state in Redis;
//   peer bottleneck, workload rate: the same with a reservoir (a rate limit: a job takes
//     one from it; it never runs dry);
//   peer rlf, workload rate: rate-limiter-flexible's RateLimiterRedis, n consume() calls
//     (points never run out) by conc loops.
// Prints one JSON line: { peer, workload, conc, n, ops_per_s }.
"use strict";
const Redis = require("ioredis");
const Bottleneck = require("bottleneck");
const { RateLimiterRedis } = require("rate-limiter-flexible");

const [port, peer, workload, n, conc] = [
  Number(process.argv[2]), process.argv[3], process.argv[4], Number(process.argv[5]), Number(process.argv[6]),
];

async function loops(op) {
  let left = n;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: conc }, async () => {
    while (left > 0) {
      left--;
      await op();
    }
  }));
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function main() {
  let secs, close;
  if (peer === "bottleneck") {
    const opts = {
      id: `bench-${workload}-${conc}-${process.pid}`, datastore: "ioredis", clearDatastore: true,
      clientOptions: { host: "127.0.0.1", port }, maxConcurrent: conc,
    };
    if (workload === "rate") Object.assign(opts, { maxConcurrent: null, reservoir: 1e9 });
    const limiter = new Bottleneck(opts);
    await limiter.ready();
    const job = () => Promise.resolve(1);
    await loops(() => limiter.schedule(job));  // warm-up: the scripts loaded, the connection up
    secs = await loops(() => limiter.schedule(job));
    close = () => limiter.disconnect();
  } else if (peer === "rlf") {
    const redis = new Redis({ host: "127.0.0.1", port, enableOfflineQueue: false });
    await new Promise((resolve) => redis.once("ready", resolve));
    const rl = new RateLimiterRedis({ storeClient: redis, points: 1e9, duration: 1, keyPrefix: `rlf${process.pid}` });
    await loops(() => rl.consume("k"));
    secs = await loops(() => rl.consume("k"));
    close = () => redis.disconnect();
  } else {
    throw new Error("unknown peer " + peer);
  }
  console.log(JSON.stringify({ peer, workload, conc, n, ops_per_s: n / secs }));
  await close();
}

main().catch((e) => { console.error(e); process.exit(1); });
