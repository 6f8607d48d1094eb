// A TypeScript/Node client (@grpc/grpc-js + @grpc/proto-loader, loading proto/ at run time)
// running a full n-party session. usage: node sign.js PROTO_DIR CONFIG_JSON (same config and
// output as clients/python/sign.py: a Sign with a request id and its retry, followers reading
// WatchEvents from start_after_sequence 0, and an error's google.rpc.ErrorInfo).
const crypto = require('crypto');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const protobuf = require('protobufjs'); // @grpc/proto-loader's own dependency

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
const message = Buffer.from(cfg.message, 'hex');

// google.rpc.Status and ErrorInfo, the error details every failed call carries.
const rpc = protobuf.parse(`syntax = "proto3"; package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }`,
{ keepCase: true }).root;
function errorInfo(err) {
  const [bin] = (err.metadata && err.metadata.get('grpc-status-details-bin')) || [];
  if (!bin) return null;
  const status = rpc.lookupType('google.rpc.Status').decode(bin);
  const d = status.details.find((x) => x.type_url.endsWith('/google.rpc.ErrorInfo'));
  return d ? rpc.lookupType('google.rpc.ErrorInfo').decode(d.value) : null;
}

function follow(i) {
  return new Promise((resolve, reject) => {
    // From the start of the retained events: the announcement cannot be missed.
    const stream = stubs[i].WatchEvents({ start_after_sequence: '0' });
    let last = 0n;
    stream.on('data', async (ev) => {
      const seq = BigInt(ev.sequence);
      if (seq !== 0n && seq <= last) reject(new Error('sequence numbers must increase'));
      if (seq > last) last = seq;
      if (ev.event !== 'session_created') return;
      const s = ev.session_created.session;
      if (!Buffer.from(s.context.message).equals(message)) return;
      try {
        const r = await call(stubs[i], 'Sign', { session_id: s.session_id, timeout_ms: 60000 });
        stream.cancel();
        resolve(r.signature);
      } catch (e) { reject(e); }
    });
    stream.on('error', (e) => { if (e.code !== grpc.status.CANCELLED) reject(e); });
  });
}

(async () => {
  const followers = [];
  for (let i = 1; i < stubs.length; i++) followers.push(follow(i));
  const request = {
    signer_keys: cfg.parties.map((p) => Buffer.from(p.key, 'hex')),
    message,
    format: FORMAT,
    timeout_ms: 60000,
    request_id: `js-${crypto.randomUUID()}`,
  };
  const r = await call(stubs[0], 'Sign', request);
  const retry = await call(stubs[0], 'Sign', request);
  if (retry.session.session_id !== r.session.session_id) throw new Error('a retry made a second session');
  if (r.session.request_id !== request.request_id) throw new Error('request id not kept');
  const others = await Promise.all(followers);
  for (const s of others) if (!Buffer.from(s).equals(Buffer.from(r.signature))) throw new Error('signatures differ');
  const f = await call(stubs[1], 'GetFinalSignature', { session_id: r.session.session_id });
  let reason = null;
  try {
    await call(stubs[0], 'GetSession', { session_id: '00'.repeat(16) });
    throw new Error('an unknown session was found');
  } catch (e) {
    const info = errorInfo(e);
    if (!info) throw e;
    if (info.metadata.session_id !== '00'.repeat(16)) throw new Error('no session id in the error');
    reason = info.reason;
  }
  console.log(JSON.stringify({
    session_id: r.session.session_id,
    signature: Buffer.from(r.signature).toString('hex'),
    output_key: Buffer.from(f.output_key).toString('hex'),
    message: Buffer.from(f.message).toString('hex'),
    format: cfg.format,
    error_reason: reason,
  }));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
