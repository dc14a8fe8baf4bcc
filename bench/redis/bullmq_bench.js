// BullMQ's side of bench/redis_queue_run.sh: n jobs added (addBulk, 1000 at a time) and
// processed by one Worker of `conc` concurrency with a no-op processor, removeOnComplete (the
// job's keys deleted as it completes, as baton's queue XDELs an acked entry). Timed from the
// first add to the n-th 'completed' event (emitted once the job is moved to completed: its
// ack). Prints one JSON line. usage: node bullmq_bench.js <port> <n> <conc>
const { Queue, Worker } = require("bullmq");

const [port, n, conc] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
const name = `bench${process.pid}${Date.now()}`;

(async () => {
  const queue = new Queue(name, { connection, defaultJobOptions: { removeOnComplete: true, removeOnFail: true } });
  await queue.waitUntilReady();
  let done = 0;
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const t0 = performance.now();
  const worker = new Worker(name, async () => undefined, { connection, concurrency: conc });
  worker.on("completed", () => { if (++done === n) finish(); });
  for (let i = 0; i < n; i += 1000) {
    const bulk = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) bulk.push({ name: "job", data: { n: j } });
    await queue.addBulk(bulk);
  }
  await finished;
  const ms = performance.now() - t0;
  console.log(JSON.stringify({ peer: "bullmq", n, conc, ms: Math.round(ms), jobs_per_s: Math.round((n / ms) * 1000) }));
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
})().catch((e) => { console.error(e); process.exit(1); });
