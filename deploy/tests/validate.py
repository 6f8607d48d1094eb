#!/usr/bin/env python3
"""Render every kustomization and check it against the deployment's promises.

Renders the party overlays (dev, prod), the two-cluster example (party-a, party-b), the
cluster-wide pieces (cluster) and the applications' namespace (apps) with `kubectl kustomize`,
validates every built-in object strictly against the Kubernetes 1.32 schemas
(kubernetes-validate, offline), checks the CRD objects' required fields, and checks:

- the trust boundary: the party's namespace is its own (pod-security restricted, default-deny
  NetworkPolicy), application certificates come from a separate CA (ClusterIssuer musig2-apps,
  copied into party namespaces by trust-manager) and reach the API only from namespaces
  labelled musig2.io/apps; the coordinator's client certificate comes from a dedicated issuer
  restricted by approver-policy, and the signer allow-lists it by SPIFFE id, never by CN;
- the signer: a StatefulSet of one with a ReadWriteOncePod journal volume, dedicated nodes,
  Guaranteed QoS, no egress; base policy (formats, message size, rate) and, in production, an
  output-key allow-list whose placeholder fails closed;
- probes (startup, /healthz, /readyz), headless Services for the StatefulSets, metrics ports in
  Services and NetworkPolicies, a LoadBalancer for P2P, DNS egress only to kube-dns, PDBs that
  let drains evict unhealthy pods, Secret volumes 0400, server names <svc>.<ns>.svc;
- observability (PodMonitor, alert rules on metric names the services export, a Grafana
  dashboard), a backup CronJob, a dev key made by the signer itself, .dockerignore;
- the two-cluster example: each party's announced address is what the other dials, and the
  published P2P Service and the NetworkPolicies agree with it.

Exits non-zero with the list of problems. MUSIG2_K8S_ROOT points at another copy of deploy/k8s
(the tests re-introduce mistakes into a copy and expect them caught).
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = pathlib.Path(os.environ.get("MUSIG2_K8S_ROOT") or HERE.parent / "k8s")
DOCKERIGNORE = pathlib.Path(os.environ.get("MUSIG2_DOCKERIGNORE") or HERE.parent.parent / ".dockerignore")
K8S_VERSION = "1.32.0"
# Metric families the services export (coordinator-svc/src/metrics.rs, signer-svc/src/metrics.rs).
METRICS = {
    "musig2_coordinator_sessions", "musig2_coordinator_messages_rejected",
    "musig2_coordinator_messages_accepted", "musig2_coordinator_round_duration_seconds",
    "musig2_coordinator_signer_call_duration_seconds", "musig2_coordinator_failovers",
    "musig2_signer_requests", "musig2_signer_request_duration_seconds",
    "musig2_signer_nonces_issued", "musig2_signer_partial_signatures",
    "musig2_signer_policy_refusals", "musig2_signer_nonces_held", "musig2_signer_journal_sequence",
}
ALERTS = {"Musig2SignerUnreachable", "Musig2CoordinatorNotReady", "Musig2SessionsStuck",
          "Musig2FailoverExhausted", "Musig2PeerRefusalsSpiking", "Musig2SignerJournalErrors",
          "Musig2CertificateExpiresSoon"}
problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)


def render(path):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for d in docs:
        if "." in d["apiVersion"].split("/")[0] and not d["apiVersion"].startswith(("apps/", "batch/", "policy/", "networking.k8s.io/", "rbac.authorization.k8s.io/")):
            check_crd(path, d)
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except Exception as e:  # noqa: BLE001 - report every schema failure
            problems.append(f"{path}: {d['kind']}/{d['metadata'].get('name')}: {e}")
    return docs


def check_crd(where, d):
    spec, name, kind = d.get("spec", {}), d["metadata"]["name"], d["kind"]
    if kind == "Certificate":
        need(spec.get("secretName") and spec.get("issuerRef", {}).get("name"), f"{where}: Certificate {name}: secretName/issuerRef")
    elif kind in ("Issuer", "ClusterIssuer"):
        need(any(k in spec for k in ("selfSigned", "ca")), f"{where}: {kind} {name}: no issuer type")
    elif kind == "PrometheusRule":
        need(spec.get("groups"), f"{where}: PrometheusRule {name}: no groups")
    elif kind == "PodMonitor":
        need(spec.get("podMetricsEndpoints") and spec.get("selector"), f"{where}: PodMonitor {name}")


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def index(docs):
    by = {}
    for d in docs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return by


def configmap(by, prefix, key):
    for name, cm in by.get("ConfigMap", {}).items():
        if name.startswith(prefix) and key in cm.get("data", {}):
            return cm["data"][key]
    return None


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def check_workload(where, name, obj):
    spec = pod_spec(obj)
    pod_sc = spec.get("securityContext", {})
    need(pod_sc.get("runAsNonRoot") is True, f"{where}/{name}: runAsNonRoot")
    need(pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}/{name}: seccomp")
    need(spec.get("automountServiceAccountToken") is False, f"{where}/{name}: service account token mounted")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{where}/{name}/{c['name']}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{where}/{name}/{c['name']}: allowPrivilegeEscalation")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{name}/{c['name']}: capabilities")
        res = c.get("resources", {})
        need(res.get("requests") and res.get("limits"), f"{where}/{name}/{c['name']}: resources")
    for c in spec.get("containers", []):
        probe = lambda k: c.get(k, {}).get("httpGet", {})  # noqa: E731
        need(probe("startupProbe").get("path") == "/healthz", f"{where}/{name}: startupProbe on /healthz")
        need(probe("livenessProbe").get("path") == "/healthz", f"{where}/{name}: livenessProbe on /healthz")
        need(probe("readinessProbe").get("path") == "/readyz", f"{where}/{name}: readinessProbe on /readyz")
        need(all(probe(k).get("port") == "metrics" for k in ("startupProbe", "livenessProbe", "readinessProbe")), f"{where}/{name}: probes on the metrics port")
    for v in spec.get("volumes", []):
        if "secret" in v:
            need(v["secret"].get("defaultMode") == 0o400, f"{where}/{name}: Secret volume {v['name']} defaultMode is not 0400")
    for t in obj["spec"].get("volumeClaimTemplates", []):
        need(t["spec"].get("accessModes") == ["ReadWriteOncePod"], f"{where}/{name}: volume {t['metadata']['name']} is not ReadWriteOncePod")


def check_party(where, docs, prod):
    by = index(docs)
    namespaces = by.get("Namespace", {})
    need(len(namespaces) == 1, f"{where}: expected the party's own Namespace, got {list(namespaces)}")
    ns_name, ns = next(iter(namespaces.items()), (None, {"metadata": {}}))
    labels = ns["metadata"].get("labels", {})
    need(labels.get("pod-security.kubernetes.io/enforce") == "restricted", f"{where}: namespace not pod-security restricted")
    need(labels.get("musig2.io/party") == "true", f"{where}: namespace lacks musig2.io/party=true (trust-manager target)")
    for d in docs:
        if d["kind"] not in ("Namespace",):
            need(d["metadata"].get("namespace") == ns_name, f"{where}: {d['kind']}/{d['metadata']['name']} outside the party namespace")
    # Default deny.
    dd = [p for p in by.get("NetworkPolicy", {}).values() if p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    need(len(dd) == 1, f"{where}: no default-deny NetworkPolicy")
    # Workloads.
    need("musig2-signer" not in by.get("Deployment", {}), f"{where}: the signer is a Deployment (two pods when a node is lost)")
    sts = by.get("StatefulSet", {})
    signer, coord = sts.get("musig2-signer"), sts.get("musig2-coordinator")
    need(signer is not None, f"{where}: signer StatefulSet missing")
    need(coord is not None, f"{where}: coordinator StatefulSet missing")
    if not (signer and coord):
        return
    need(signer["spec"].get("replicas") == 1, f"{where}: signer replicas != 1")
    for name, obj in sts.items():
        check_workload(where, name, obj)
    sspec = pod_spec(signer)
    need(sspec.get("nodeSelector", {}).get("musig2.io/signer") == "true" and sspec.get("tolerations"), f"{where}: signer not on dedicated nodes")
    for c in sspec.get("containers", []) + sspec.get("initContainers", []):
        r = c.get("resources", {})
        need(r.get("requests") == r.get("limits"), f"{where}: signer container {c['name']} not Guaranteed QoS (requests != limits)")
    # Services.
    svcs = by.get("Service", {})
    for name, obj in sts.items():
        hs = svcs.get(obj["spec"]["serviceName"], {}).get("spec", {})
        need(hs.get("clusterIP") == "None", f"{where}: {name}'s serviceName is not a headless Service")
        need(any(p.get("name") == "metrics" for p in hs.get("ports", [])), f"{where}: {name}'s Service has no metrics port")
    p2p = svcs.get("musig2-coordinator-p2p", {}).get("spec", {})
    need(p2p.get("type") == "LoadBalancer" and [p["port"] for p in p2p.get("ports", [])] == [4001], f"{where}: no LoadBalancer Service for P2P on 4001")
    api = svcs.get("musig2-coordinator-api", {}).get("spec", {})
    need([p["port"] for p in api.get("ports", [])] == [50052], f"{where}: API Service ports {api.get('ports')}")
    # PDBs.
    for name, pdb in by.get("PodDisruptionBudget", {}).items():
        need(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", f"{where}: PDB {name} blocks evicting an unhealthy pod")
    need(len(by.get("PodDisruptionBudget", {})) == 2, f"{where}: PDBs {list(by.get('PodDisruptionBudget', {}))}")
    # NetworkPolicies.
    s_labels = signer["spec"]["template"]["metadata"]["labels"]
    c_labels = coord["spec"]["template"]["metadata"]["labels"]
    pols = [p for p in by.get("NetworkPolicy", {}).values() if p["spec"].get("podSelector") and labels_match(p["spec"]["podSelector"].get("matchLabels"), s_labels)]
    need(len(pols) == 1, f"{where}: {len(pols)} NetworkPolicies select the signer")
    for p in pols:
        spec = p["spec"]
        need(set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}, f"{where}: signer policy types")
        need(spec.get("egress", []) == [], f"{where}: the signer has egress {spec.get('egress')}")
        for rule in spec.get("ingress", []):
            ports = [pt.get("port") for pt in rule.get("ports", [])]
            peers = rule.get("from", [])
            need(peers, f"{where}: signer ingress from anywhere on {ports}")
            if ports == [50051]:
                need(all(set(pe) == {"podSelector"} and pe["podSelector"].get("matchLabels") and labels_match(pe["podSelector"]["matchLabels"], c_labels) for pe in peers), f"{where}: signer gRPC admits pods other than the coordinator's")
            elif ports == [9464]:
                need(all(pe.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"} for pe in peers), f"{where}: signer metrics open beyond the monitoring namespace")
            else:
                problems.append(f"{where}: signer ingress on unexpected ports {ports}")
    cpols = [p for p in by.get("NetworkPolicy", {}).values() if p["spec"].get("podSelector") and labels_match(p["spec"]["podSelector"].get("matchLabels"), c_labels)]
    need(len(cpols) == 1, f"{where}: {len(cpols)} NetworkPolicies select the coordinator")
    for p in cpols:
        for rule in p["spec"].get("ingress", []):
            ports = [pt.get("port") for pt in rule.get("ports", [])]
            peers = rule.get("from", [])
            if 50052 in ports:
                need(peers and all(set(pe) == {"namespaceSelector"} and pe["namespaceSelector"].get("matchLabels") == {"musig2.io/apps": "true"} for pe in peers), f"{where}: the API is reachable from outside the applications' namespaces: {peers}")
            if 9465 in ports:
                need(peers and all(pe.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"} for pe in peers), f"{where}: coordinator metrics open beyond monitoring")
        need(any(4001 in [pt.get("port") for pt in r.get("ports", [])] and any(pe.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for pe in r.get("from", [])) for r in p["spec"].get("ingress", [])), f"{where}: P2P ingress not open to other parties")
        for rule in p["spec"].get("egress", []):
            ports = [pt.get("port") for pt in rule.get("ports", [])]
            if 53 in ports:
                to = rule.get("to", [])
                need(to and all(pe.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "kube-system"} and pe.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for pe in to), f"{where}: DNS egress not limited to kube-dns")
    # PKI.
    certs = by.get("Certificate", {})
    ca = certs.get("musig2-ca", {}).get("spec", {})
    need(ca.get("isCA") and ca.get("privateKey", {}).get("rotationPolicy") == "Never", f"{where}: party CA not long-lived with rotationPolicy Never")
    for cert, svc in (("musig2-signer-tls", "musig2-signer"), ("musig2-coordinator-api", "musig2-coordinator-api")):
        need(f"{svc}.{ns_name}.svc" in certs.get(cert, {}).get("spec", {}).get("dnsNames", []), f"{where}: {cert} lacks {svc}.{ns_name}.svc")
    client = certs.get("musig2-coordinator-signer-client", {}).get("spec", {})
    need(client.get("issuerRef", {}).get("name") == "musig2-signer-client", f"{where}: coordinator client certificate not from its dedicated issuer")
    need(client.get("uris") == ["spiffe://musig2/coordinator"], f"{where}: coordinator client certificate has no SPIFFE id")
    others = [n for n, c in certs.items() if n != "musig2-coordinator-signer-client" and c["spec"].get("issuerRef", {}).get("name") == "musig2-signer-client"]
    need(not others, f"{where}: the signer-client issuer also issues {others}")
    # Configurations.
    stoml = configmap(by, "signer-config", "signer.toml")
    ctoml = configmap(by, "coordinator-config", "coordinator.toml")
    need(stoml is not None and ctoml is not None, f"{where}: configuration ConfigMaps missing")
    if stoml:
        s = tomllib.loads(stoml)
        allowed = s.get("tls", {}).get("allowed_clients", [])
        need(allowed and all(a.split(":", 1)[0] in ("uri", "spki", "sha256") for a in allowed), f"{where}: signer allow-list by name: {allowed}")
        kinds = {r.get("kind") for r in s.get("policy", {}).get("rules", [])}
        need({"allowed_formats", "max_message_length", "rate_limit"} <= kinds, f"{where}: signer base policy incomplete: {sorted(kinds)}")
        if prod:
            rules = [r for r in s.get("policy", {}).get("rules", []) if r.get("kind") in ("allowed_output_keys", "allowed_key_sets")]
            need(rules, f"{where}: production signer without an output-key / key-set allow-list")
    if ctoml:
        c = tomllib.loads(ctoml)
        allowed = c.get("api", {}).get("allowed_clients", [])
        need(allowed and all(a.split(":", 1)[0] in ("uri", "spki", "sha256") for a in allowed), f"{where}: API allow-list by name: {allowed}")
        need(c.get("api", {}).get("client_ca", "").startswith("/etc/musig2/apps-ca/"), f"{where}: the API does not trust the applications' CA")
        vols = {v["name"]: v for v in pod_spec(coord).get("volumes", [])}
        need(vols.get("apps-ca", {}).get("configMap", {}).get("name") == "musig2-apps-ca", f"{where}: apps CA not mounted from trust-manager's ConfigMap")
    # Observability, backups.
    rules = by.get("PrometheusRule", {}).get("musig2", {}).get("spec", {}).get("groups", [])
    alerts = {r.get("alert"): r.get("expr", "") for g in rules for r in g.get("rules", [])}
    need(ALERTS <= set(alerts), f"{where}: alerts missing: {sorted(ALERTS - set(alerts))}")
    for name, expr in alerts.items():
        for m in re.findall(r"musig2_[a-z_]+", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", m)
            need(base in METRICS, f"{where}: alert {name} uses unknown metric {m}")
    need("musig2" in by.get("PodMonitor", {}), f"{where}: no PodMonitor")
    dash = configmap(by, "musig2-grafana-dashboard", "musig2.json")
    need(dash is not None, f"{where}: no Grafana dashboard ConfigMap")
    if dash:
        for m in re.findall(r"musig2_[a-z_]+", json.dumps(json.loads(dash))):
            need(re.sub(r"_(total|bucket|count|sum)$", "", m) in METRICS, f"{where}: dashboard uses unknown metric {m}")
    need("musig2-backup" in by.get("CronJob", {}), f"{where}: no backup CronJob")
    return ns_name, by


def check_dev(by):
    need(not any(n == "musig2-signer-keys" for n in by.get("Secret", {})), "dev: an empty keys Secret (the signer would fail at start)")
    init = pod_spec(by["StatefulSet"]["musig2-signer"]).get("initContainers", [])
    need(any("keygen" in c.get("args", []) and "--if-missing" in c.get("args", []) for c in init), "dev: no key made on first start")


def check_two_cluster(a, b):
    def coord(by):
        return tomllib.loads(configmap(by, "coordinator-config", "coordinator.toml") or "")

    def host_port(addr):
        m = re.match(r"/dns4/([^/]+)/tcp/(\d+)", addr)
        return (m.group(1), int(m.group(2))) if m else (None, None)

    for me, other, mb, ob in (("party-a", "party-b", a, b), ("party-b", "party-a", b, a)):
        ext = coord(mb).get("external_addresses", [])
        boot = coord(ob).get("bootstrap_peers", [])
        need(len(ext) == 1, f"{me}: external_addresses {ext}")
        if not ext:
            continue
        host, port = host_port(ext[0])
        need(any(host_port(x) == (host, port) for x in boot), f"{other} does not dial {me}'s announced address {ext[0]} (bootstrap {boot})")
        svc = mb.get("Service", {}).get("musig2-coordinator-p2p", {})
        need(svc.get("metadata", {}).get("annotations", {}).get("external-dns.alpha.kubernetes.io/hostname") == host, f"{me}: P2P Service not published as {host}")
        need([p["port"] for p in svc.get("spec", {}).get("ports", [])] == [port], f"{me}: P2P Service port is not the announced {port}")


def check_cluster_and_apps(cluster, apps, party_by):
    cby, aby = index(cluster), index(apps)
    need("musig2-apps" in cby.get("ClusterIssuer", {}), "cluster: no ClusterIssuer musig2-apps")
    bundle = cby.get("Bundle", {}).get("musig2-apps-ca", {}).get("spec", {})
    need(bundle.get("target", {}).get("namespaceSelector", {}).get("matchLabels") == {"musig2.io/party": "true"}, "cluster: the apps CA bundle does not target party namespaces")
    crp = cby.get("CertificateRequestPolicy", {}).get("musig2-signer-client", {}).get("spec", {})
    need(crp.get("selector", {}).get("issuerRef", {}).get("name") == "musig2-signer-client", "cluster: no approver policy for the signer-client issuer")
    need(crp.get("allowed", {}).get("uris", {}).get("values") == ["spiffe://musig2/coordinator"], "cluster: approver policy allows other ids")
    ns = next(iter(aby.get("Namespace", {}).values()), {"metadata": {}})
    need(ns["metadata"].get("labels", {}).get("musig2.io/apps") == "true", "apps: namespace not labelled musig2.io/apps=true")
    need(ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted", "apps: namespace not restricted")
    api_allowed = tomllib.loads(configmap(party_by, "coordinator-config", "coordinator.toml") or "").get("api", {}).get("allowed_clients", [])
    for name, cert in aby.get("Certificate", {}).items():
        spec = cert["spec"]
        need(spec.get("issuerRef") == {"name": "musig2-apps", "kind": "ClusterIssuer"}, f"apps: {name} not from the applications' CA")
        need(any(f"uri:{u}" in api_allowed for u in spec.get("uris", [])), f"apps: {name}'s SPIFFE id is not on the API allow-list {api_allowed}")


def check_dockerignore():
    text = DOCKERIGNORE.read_text() if DOCKERIGNORE.exists() else ""
    for pat in ("target", ".git", "*.key", "keys.json"):
        need(any(line.strip().strip("/") in (pat, f"**/{pat}") for line in text.splitlines()), f".dockerignore does not exclude {pat}")


counts = {}
party = {}
for overlay, prod in (("overlays/dev", False), ("overlays/prod", True), ("examples/two-cluster/party-a", True), ("examples/two-cluster/party-b", True)):
    docs = render(overlay)
    counts[overlay] = len(docs)
    result = check_party(overlay, docs, prod)
    if result:
        party[overlay] = result[1]
if "overlays/dev" in party:
    check_dev(party["overlays/dev"])
if "examples/two-cluster/party-a" in party and "examples/two-cluster/party-b" in party:
    check_two_cluster(party["examples/two-cluster/party-a"], party["examples/two-cluster/party-b"])
cluster, apps = render("cluster"), render("apps")
counts["cluster"], counts["apps"] = len(cluster), len(apps)
if "overlays/prod" in party:
    check_cluster_and_apps(cluster, apps, party["overlays/prod"])
check_dockerignore()
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"ok: {counts}")
