// A real PouchDB replication from a CouchDB-protocol server into a local, durable LevelDB
// database: what a PouchDB app does on first sync. Used by bench/peers.py, which times it
// against syncd's SDK committing the same rows into SQLite.
//
//   node replicate.js SOURCE_URL LOCAL_DIR BATCH_SIZE
//
// Prints one JSON line: docs written, seconds of the replication alone (node's start-up and
// module loading excluded, as the SDK's are), the local doc count, and node's CPU.
'use strict';
const PouchDB = require('pouchdb');

async function main() {
  const [source, dir, batch] = process.argv.slice(2);
  const local = new PouchDB(dir);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const result = await PouchDB.replicate(source, local, {
    batch_size: Number(batch),
    batches_limit: 10,
  });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const info = await local.info();
  await local.close();
  process.stdout.write(JSON.stringify({
    ok: result.ok,
    docs_written: result.docs_written,
    doc_count: info.doc_count,
    seconds,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
  }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`replication failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
