// amqplib (Node) against a real levee: publish with confirms, consume, ack.
// Usage: node amqplib_smoke.js PORT (NODE_PATH points at the node_modules holding amqplib).
const amqp = require('amqplib');

async function main() {
  const port = process.argv[2];
  const conn = await amqp.connect(`amqp://guest:guest@127.0.0.1:${port}/%2f`);
  const pub = await conn.createConfirmChannel();
  await pub.assertQueue('node-jobs', { durable: true, arguments: { 'x-max-length': 1000 } });
  const n = 50;
  for (let i = 0; i < n; i++) {
    pub.sendToQueue('node-jobs', Buffer.from(`job-${i}`), {
      persistent: true,
      contentType: 'text/plain',
      headers: { attempt: i },
    });
  }
  await pub.waitForConfirms();
  const sub = await conn.createChannel();
  await sub.prefetch(5);
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${n} arrived`)), 20000);
    sub.consume('node-jobs', (msg) => {
      if (msg.properties.contentType !== 'text/plain') reject(new Error('content type lost'));
      if (msg.properties.headers.attempt !== got.length) reject(new Error('headers lost or reordered'));
      got.push(msg.content.toString());
      sub.ack(msg);
      if (got.length === n) { clearTimeout(timer); resolve(); }
    });
  });
  for (let i = 0; i < n; i++) {
    if (got[i] !== `job-${i}`) throw new Error(`order: ${got[i]} at ${i}`);
  }
  const q = await pub.checkQueue('node-jobs');
  await conn.close();
  console.log(`ok ${got.length} messages, ${q.messageCount} left`);
}

main().catch((e) => { console.error(e); process.exit(1); });
