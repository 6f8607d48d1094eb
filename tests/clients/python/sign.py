#!/usr/bin/env python3
"""A Python client generated from proto/ (grpcio-tools) running a full n-party session.

usage: sign.py GENERATED_DIR CONFIG_JSON
CONFIG_JSON: {"message": hex, "format": "bip340"|"lotus",
              "parties": [{"api": "host:port", "key": hex, "ca": path, "cert": path, "tls_key": path}, ...]}
Party 0 signs with a new session (one-call Sign); the others join when WatchEvents reports it.
Prints one JSON object: session_id, signature, output_key, message, format.
"""
import json
import sys
import threading

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from musig2.v1 import coordinator_pb2 as c  # noqa: E402
from musig2.v1 import coordinator_pb2_grpc as cg  # noqa: E402
from musig2.v1 import types_pb2 as t  # noqa: E402

cfg = json.load(open(sys.argv[2]))


def creds(p):
    return grpc.ssl_channel_credentials(
        root_certificates=open(p["ca"], "rb").read(),
        private_key=open(p["tls_key"], "rb").read(),
        certificate_chain=open(p["cert"], "rb").read(),
    )


opts = [("grpc.ssl_target_name_override", "localhost")]
stubs = [cg.CoordinatorServiceStub(grpc.secure_channel(p["api"], creds(p), options=opts)) for p in cfg["parties"]]
fmt = t.SIGNATURE_FORMAT_LOTUS if cfg["format"] == "lotus" else t.SIGNATURE_FORMAT_BIP340
results, errors = {}, []


def follower(i, ready):
    try:
        stream = stubs[i].WatchEvents(c.WatchEventsRequest())
        stream.initial_metadata()  # the server has subscribed once its headers arrive
        ready.set()
        for ev in stream:
            if ev.HasField("session_created"):
                sid = ev.session_created.session.session_id
                r = stubs[i].Sign(c.SignRequest(session_id=sid, timeout_ms=60000), timeout=90)
                results[i] = r.signature
                stream.cancel()
                return
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            errors.append(f"party {i}: {e.code()} {e.details()}")


threads = []
for i in range(1, len(stubs)):
    ready = threading.Event()
    th = threading.Thread(target=follower, args=(i, ready), daemon=True)
    th.start()
    ready.wait(10)
    threads.append(th)

try:
    r = stubs[0].Sign(
        c.SignRequest(
            signer_keys=[bytes.fromhex(p["key"]) for p in cfg["parties"]],
            message=bytes.fromhex(cfg["message"]),
            format=fmt,
            timeout_ms=60000,
        ),
        timeout=90,
    )
except grpc.RpcError as e:
    sys.exit(f"party 0 Sign failed: {e.code()} {e.details()}")
for th in threads:
    th.join(90)
if errors:
    sys.exit("; ".join(errors))
assert all(results.get(i) == r.signature for i in range(1, len(stubs))), "every party returned the same signature"
final = stubs[1].GetFinalSignature(c.GetFinalSignatureRequest(session_id=r.session.session_id))
print(json.dumps({
    "session_id": r.session.session_id,
    "signature": r.signature.hex(),
    "output_key": final.output_key.hex(),
    "message": final.message.hex(),
    "format": cfg["format"],
}))
