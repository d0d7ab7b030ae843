// BullMQ's side of benchmarks/peers.py, in Node: the same scenario and JSON lines.
//
// stdin: {"command": "config", redis, pauses, arrival}, then {"command": "go"};
// stdout: {"event": "waiting"} once every waiter waits, {"event": "done", latencies}.
// Jobs are enqueued, one waiter per job arrives over `arrival` s calling
// job.waitUntilFinished(queueEvents) (one QueueEvents for all), and on "go" a Worker
// (concurrency 50) runs them; latency = waiter woke - job's last line (one clock).
// bullmq comes from NODE_PATH (peers.py installs it with npm into a cache folder).
"use strict";

const readline = require("node:readline");
const { performance } = require("node:perf_hooks");
const { Queue, QueueEvents, Worker } = require("bullmq");

const CONCURRENCY = 50;
const now = () => performance.now() / 1000;
const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
const say = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + "\n");

async function main() {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const config = JSON.parse((await lines.next()).value);
  const url = new URL(config.redis);
  const connection = { host: url.hostname, port: Number(url.port || 6379) };
  const queue = new Queue("peers", { connection });
  const events = new QueueEvents("peers", { connection });
  await events.waitUntilReady();
  const ended = new Map();
  const jobs = [];
  for (const pause of config.pauses) {
    jobs.push(await queue.add("sleep", { pause }, { removeOnComplete: false }));
  }
  const began = now();
  const woke = new Map();
  const waiters = jobs.map(async (job, index) => {
    await sleep(Math.max(0, began + (index * config.arrival) / jobs.length - now()));
    await job.waitUntilFinished(events);
    woke.set(job.id, now());
  });
  await sleep(config.arrival + 0.3);
  say("waiting");
  const go = JSON.parse((await lines.next()).value);
  if (go.command !== "go") throw new Error(`expected go, got ${go.command}`);
  const worker = new Worker(
    "peers",
    async (job) => {
      await sleep(job.data.pause);
      ended.set(job.id, now());
    },
    { connection, concurrency: CONCURRENCY, autorun: false },
  );
  worker.run();
  await Promise.all(waiters);
  say("done", { latencies: jobs.map((job) => woke.get(job.id) - ended.get(job.id)) });
  await worker.close();
  await events.close();
  await queue.close();
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
