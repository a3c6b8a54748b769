#!/usr/bin/env bash
# tools.sh builds the pinned external programs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl, helm, and
# CoreDNS with only the local cluster's plugins) from the tools module into
# .cache/bin. They are rebuilt only when the pins or the Go version change.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.cache/bin"
mod="$root/e2e/tools"
bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl helm coredns)

stamp=$( (cat "$mod/go.mod" "$mod/go.sum" "$mod/coredns/main.go" "$0"; go version) | sha256sum | cut -c1-16)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
  ok=1
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || ok=0; done
  [ $ok = 1 ] && exit 0
fi

kver=v1.37.2
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=1 -X $pkg.gitMinor=37 -X $pkg.gitTreeState=clean"
done
ldflags+=" -X helm.sh/helm/v3/internal/version.version=v3.22.0"

echo "tools: building ${bins[*]} into $out (a few minutes on a cold cache)" >&2
mkdir -p "$out"
cd "$mod"
go build -trimpath -ldflags "$ldflags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl \
  helm.sh/helm/v3/cmd/helm \
  ./coredns
echo "$stamp" > "$out/.stamp"
