// A TypeScript/Node client (@grpc/grpc-js + @grpc/proto-loader, loading proto/ at run time)
// running a full n-party session. usage: node sign.js PROTO_DIR CONFIG_JSON (same config and
// output as clients/python/sign.py).
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [protoDir, cfgPath] = process.argv.slice(2);
const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
const def = loader.loadSync('musig2/v1/coordinator.proto', {
  includeDirs: [protoDir], keepCase: true, longs: String, enums: Number, defaults: true, oneofs: true,
});
const v1 = grpc.loadPackageDefinition(def).musig2.v1;
const opts = { 'grpc.ssl_target_name_override': 'localhost' };
const stubs = cfg.parties.map((p) => new v1.CoordinatorService(p.api,
  grpc.credentials.createSsl(fs.readFileSync(p.ca), fs.readFileSync(p.tls_key), fs.readFileSync(p.cert)), opts));
const call = (stub, method, req) => new Promise((resolve, reject) =>
  stub[method](req, { deadline: Date.now() + 90000 }, (err, res) => (err ? reject(err) : resolve(res))));
const FORMAT = cfg.format === 'lotus' ? 2 : 1;

function follow(i, subscribed) {
  return new Promise((resolve, reject) => {
    const stream = stubs[i].WatchEvents({});
    // The server has subscribed once its headers arrive.
    stream.on('metadata', () => subscribed());
    stream.on('data', async (ev) => {
      if (ev.event !== 'session_created') return;
      try {
        const r = await call(stubs[i], 'Sign', { session_id: ev.session_created.session.session_id, timeout_ms: 60000 });
        stream.cancel();
        resolve(r.signature);
      } catch (e) { reject(e); }
    });
    stream.on('error', (e) => { if (e.code !== grpc.status.CANCELLED) reject(e); });
  });
}

(async () => {
  const followers = [];
  const subscriptions = [];
  for (let i = 1; i < stubs.length; i++) {
    let done;
    subscriptions.push(new Promise((r) => { done = r; }));
    followers.push(follow(i, done));
  }
  await Promise.all(subscriptions);
  const r = await call(stubs[0], 'Sign', {
    signer_keys: cfg.parties.map((p) => Buffer.from(p.key, 'hex')),
    message: Buffer.from(cfg.message, 'hex'),
    format: FORMAT,
    timeout_ms: 60000,
  });
  const others = await Promise.all(followers);
  for (const s of others) if (!Buffer.from(s).equals(Buffer.from(r.signature))) throw new Error('signatures differ');
  const f = await call(stubs[1], 'GetFinalSignature', { session_id: r.session.session_id });
  console.log(JSON.stringify({
    session_id: r.session.session_id,
    signature: Buffer.from(r.signature).toString('hex'),
    output_key: Buffer.from(f.output_key).toString('hex'),
    message: Buffer.from(f.message).toString('hex'),
    format: cfg.format,
  }));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
