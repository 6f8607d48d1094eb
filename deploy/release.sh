#!/usr/bin/env bash
# Build, attest, sign and pin the release images.
#   deploy/release.sh VERSION REGISTRY      e.g. deploy/release.sh 0.2.0 registry.example.com/musig2
# Needs docker buildx (BuildKit), cosign (keyless or COSIGN_KEY), kustomize. Prints the digests
# and leaves deploy/k8s/overlays/prod pinned to them (commit that change).
set -euo pipefail
version="${1:?version}"; registry="${2:?registry}"
cd "$(dirname "$0")/.."
for svc in signer coordinator; do
  image="$registry/$svc:$version"
  docker buildx build -f "deploy/docker/Dockerfile.$svc" -t "$image" \
    --sbom=true --provenance=mode=max --push --metadata-file "/tmp/musig2-$svc.json" .
  digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "/tmp/musig2-$svc.json")
  cosign sign --yes "$registry/$svc@$digest"
  (cd deploy/k8s/overlays/prod && kustomize edit set image "musig2-$svc=$registry/$svc@$digest")
  echo "$svc $registry/$svc@$digest"
done
