#!/usr/bin/env python3
"""Render every kustomize overlay and check it.

- Every object of a built-in kind validates (strict) against the Kubernetes schemas
  (kubernetes-validate, offline); cert-manager objects get their required fields checked.
- The signer's NetworkPolicy admits only the coordinator's pods on the gRPC port and allows no
  egress at all; it selects exactly the signer's pods.
- Every workload runs restricted: non-root, read-only root filesystem, no privilege escalation,
  all capabilities dropped, resource requests and limits, liveness and readiness probes.
- The coordinator is a StatefulSet with a volume claim; each workload has a PodDisruptionBudget.
Exits non-zero with a list of problems.
"""
import pathlib
import subprocess
import sys

import kubernetes_validate
import yaml

import os

ROOT = pathlib.Path(os.environ.get("MUSIG2_K8S_ROOT") or pathlib.Path(__file__).resolve().parent.parent / "k8s")
K8S_VERSION = "1.32.0"
problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_workload(name, obj, overlay):
    spec = obj["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext", {})
    need(pod_sc.get("runAsNonRoot") is True, f"{overlay}/{name}: runAsNonRoot")
    need(spec.get("automountServiceAccountToken") is False, f"{overlay}/{name}: service account token mounted")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{overlay}/{name}/{c['name']}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{overlay}/{name}/{c['name']}: allowPrivilegeEscalation")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{overlay}/{name}/{c['name']}: capabilities")
        res = c.get("resources", {})
        need(res.get("requests") and res.get("limits"), f"{overlay}/{name}/{c['name']}: resources")
        need("livenessProbe" in c and "readinessProbe" in c, f"{overlay}/{name}/{c['name']}: probes")


def check_overlay(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "overlays" / overlay)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    need(len(docs) >= 15, f"{overlay}: only {len(docs)} objects rendered")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["apiVersion"].startswith("cert-manager.io/"):
            spec = d.get("spec", {})
            if d["kind"] == "Certificate":
                need(spec.get("secretName") and spec.get("issuerRef", {}).get("name"), f"{overlay}: Certificate {d['metadata']['name']}")
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except Exception as e:  # noqa: BLE001 - report every schema failure
            problems.append(f"{overlay}: {d['kind']}/{d['metadata'].get('name')}: {e}")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    statefulsets = {d["metadata"]["name"]: d for d in by_kind.get("StatefulSet", [])}
    need("musig2-signer" in deployments, f"{overlay}: signer Deployment missing")
    need("musig2-coordinator" in statefulsets, f"{overlay}: coordinator StatefulSet missing")
    need(statefulsets.get("musig2-coordinator", {}).get("spec", {}).get("volumeClaimTemplates"), f"{overlay}: coordinator has no volume claim")
    for name, obj in list(deployments.items()) + list(statefulsets.items()):
        check_workload(name, obj, overlay)
    signer_labels = deployments["musig2-signer"]["spec"]["template"]["metadata"]["labels"]
    coord_labels = statefulsets["musig2-coordinator"]["spec"]["template"]["metadata"]["labels"]
    pols = [p for p in by_kind.get("NetworkPolicy", []) if labels_match(p["spec"]["podSelector"].get("matchLabels"), signer_labels)]
    need(len(pols) == 1, f"{overlay}: {len(pols)} NetworkPolicies select the signer")
    for p in pols:
        spec = p["spec"]
        need(not labels_match(spec["podSelector"].get("matchLabels"), coord_labels), f"{overlay}: signer policy also selects the coordinator")
        need(set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}, f"{overlay}: signer policy types {spec.get('policyTypes')}")
        need(spec.get("egress", []) == [], f"{overlay}: the signer has egress {spec.get('egress')}")
        ingress = spec.get("ingress", [])
        need(len(ingress) == 1, f"{overlay}: signer ingress rules {ingress}")
        for rule in ingress:
            peers = rule.get("from", [])
            need(peers and all(set(pe) == {"podSelector"} for pe in peers), f"{overlay}: signer ingress from {peers}")
            need(all(labels_match(pe["podSelector"].get("matchLabels"), coord_labels) and pe["podSelector"].get("matchLabels") for pe in peers),
                 f"{overlay}: signer ingress admits pods other than the coordinator's")
            need([pt.get("port") for pt in rule.get("ports", [])] == [50051], f"{overlay}: signer ingress ports {rule.get('ports')}")
    pdb_targets = [p["spec"]["selector"]["matchLabels"] for p in by_kind.get("PodDisruptionBudget", [])]
    need(any(labels_match(t, signer_labels) for t in pdb_targets), f"{overlay}: no PodDisruptionBudget for the signer")
    need(any(labels_match(t, coord_labels) for t in pdb_targets), f"{overlay}: no PodDisruptionBudget for the coordinator")
    kinds = set(by_kind)
    for k in ["Issuer", "Certificate", "Service", "ConfigMap", "PersistentVolumeClaim"]:
        need(k in kinds, f"{overlay}: no {k}")
    return len(docs)


counts = {o: check_overlay(o) for o in ["dev", "prod"]}
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"ok: {counts}")
