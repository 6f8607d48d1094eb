#!/usr/bin/env python3
"""A Python client generated from proto/ (grpcio-tools) running a full n-party session.

usage: sign.py GENERATED_DIR CONFIG_JSON
CONFIG_JSON: {"message": hex, "format": "bip340"|"lotus",
              "parties": [{"api": "host:port", "key": hex, "ca": path, "cert": path, "tls_key": path}, ...]}
Party 0 signs with a new session (one-call Sign with a request id, then the same call again as a
retry after a lost reply would: the same session). The others follow WatchEvents from the start
of the node's retained events (start_after_sequence=0), so they cannot miss the announcement
however late they subscribe, and join. Errors are read from their google.rpc details.
Prints one JSON object: session_id, signature, output_key, message, format, error_reason.
"""
import json
import sys
import threading
import uuid

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from musig2.v1 import coordinator_pb2 as c  # noqa: E402
from musig2.v1 import coordinator_pb2_grpc as cg  # noqa: E402
from musig2.v1 import types_pb2 as t  # noqa: E402

cfg = json.load(open(sys.argv[2]))
message = bytes.fromhex(cfg["message"])


def creds(p):
    return grpc.ssl_channel_credentials(
        root_certificates=open(p["ca"], "rb").read(),
        private_key=open(p["tls_key"], "rb").read(),
        certificate_chain=open(p["cert"], "rb").read(),
    )


def error_info(e):
    """The google.rpc.ErrorInfo of a failed call: (reason, metadata)."""
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason, dict(info.metadata)
    return None, {}


opts = [("grpc.ssl_target_name_override", "localhost")]
stubs = [cg.CoordinatorServiceStub(grpc.secure_channel(p["api"], creds(p), options=opts)) for p in cfg["parties"]]
fmt = t.SIGNATURE_FORMAT_LOTUS if cfg["format"] == "lotus" else t.SIGNATURE_FORMAT_BIP340
results, errors = {}, []


def follower(i):
    try:
        stream = stubs[i].WatchEvents(c.WatchEventsRequest(start_after_sequence=0))
        last = 0
        for ev in stream:
            assert ev.sequence == 0 or ev.sequence > last, "sequence numbers increase"
            last = max(last, ev.sequence)
            if ev.HasField("session_created") and ev.session_created.session.context.message == message:
                sid = ev.session_created.session.session_id
                r = stubs[i].Sign(c.SignRequest(session_id=sid, timeout_ms=60000), timeout=90)
                results[i] = r.signature
                stream.cancel()
                return
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            errors.append(f"party {i}: {e.code()} {e.details()} {error_info(e)}")


threads = [threading.Thread(target=follower, args=(i,), daemon=True) for i in range(1, len(stubs))]
for th in threads:
    th.start()

request = c.SignRequest(
    signer_keys=[bytes.fromhex(p["key"]) for p in cfg["parties"]],
    message=message,
    format=fmt,
    timeout_ms=60000,
    request_id=f"py-{uuid.uuid4()}",
)
try:
    r = stubs[0].Sign(request, timeout=90)
    retry = stubs[0].Sign(request, timeout=90)
except grpc.RpcError as e:
    sys.exit(f"party 0 Sign failed: {e.code()} {e.details()} {error_info(e)}")
assert retry.session.session_id == r.session.session_id, "a retry returns the same session"
assert retry.signature == r.signature
assert r.session.request_id == request.request_id
for th in threads:
    th.join(90)
if errors:
    sys.exit("; ".join(errors))
assert all(results.get(i) == r.signature for i in range(1, len(stubs))), "every party returned the same signature"
final = stubs[1].GetFinalSignature(c.GetFinalSignatureRequest(session_id=r.session.session_id))
try:
    stubs[0].GetSession(c.GetSessionRequest(session_id="00" * 16))
    sys.exit("an unknown session was found")
except grpc.RpcError as e:
    reason, metadata = error_info(e)
    assert metadata.get("session_id") == "00" * 16, metadata
print(json.dumps({
    "session_id": r.session.session_id,
    "signature": r.signature.hex(),
    "output_key": final.output_key.hex(),
    "message": final.message.hex(),
    "format": cfg["format"],
    "error_reason": reason,
}))
