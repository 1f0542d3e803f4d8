#!/usr/bin/env bash
# Builds one Go-based server of the local stack through the Go module proxy and
# installs it into the version-keyed cache, e.g.
#   build-go-server.sh kubernetes v1.34.4 ~/.cache/canaryflow/stack/kubernetes-v1.34.4
# Components: kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl), etcd, kwok, jaeger, traefik (with its CRDs from the module zip), helm. Each build happens in a throwaway wrapper module so
# versions never mix, and the binaries land in <dest>/bin only when all succeed.
set -euo pipefail

component=$1 version=$2 dest=$3
cache_root=${CANARYFLOW_CACHE:-$HOME/.cache/canaryflow}
export GOMODCACHE=$cache_root/go/mod GOCACHE=$cache_root/go/build
export CGO_ENABLED=0 GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}

# One build per destination at a time: a second caller waits, then finds the binaries there.
# canaryflow_stack takes the same lock itself and says so with CANARYFLOW_BUILD_LOCKED=1.
mkdir -p "$(dirname "$dest")"
if [ "${CANARYFLOW_BUILD_LOCKED:-}" != 1 ]; then
  exec 9>"$dest.lock"
  flock 9
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/canaryflow-build-$component.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p out

case $component in
kubernetes)
  go mod init local/kube >/dev/null 2>&1
  # k8s.io/kubernetes replaces its staging modules with ./staging paths, which do not
  # exist in the module zip: point each of them at the published v0.Y.Z instead.
  gomod=$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  minor=$(echo "$version" | cut -d. -f2)
  staging_version="v0.${version#v1.}"
  {
    echo "require k8s.io/kubernetes $version"
    grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
    # upstream's godebug settings, single-line (`godebug k=v`) or a `godebug ( ... )` block
    awk '/^godebug \(/{b=1} b{print} b&&/^\)/{b=0} /^godebug [^(]/{print}' "$gomod"
  } >> go.mod
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  done
  # Not `go mod tidy`: it would chase the test-only imports of the whole module.
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$version" "k8s.io/kubernetes/cmd/kube-controller-manager@$version" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$version" "k8s.io/kubernetes/cmd/kubectl@$version"
  go build -trimpath -ldflags "$ldflags" -o out/ \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  ;;
etcd)
  go mod init local/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$version"
  go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
  ;;
kwok)
  go mod init local/kwok >/dev/null 2>&1
  go get "sigs.k8s.io/kwok@$version"
  go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$version" -o out/kwok sigs.k8s.io/kwok/cmd/kwok
  ;;
jaeger)
  go mod init local/jaeger >/dev/null 2>&1
  go get "github.com/jaegertracing/jaeger@$version"
  go build -trimpath -ldflags "-s -w" -o out/jaeger github.com/jaegertracing/jaeger/cmd/jaeger
  ;;
traefik)
  # Traefik's go.mod replaces three modules with forks and excludes one version, and a
  # replace or exclude only counts in the main module: `go install` refuses it, so the
  # wrapper carries the same directives (checked for v3.6.x; v3.7 needs modules the proxy
  # refuses).
  go mod init local/traefik >/dev/null 2>&1
  cat >> go.mod <<EOT
require github.com/traefik/traefik/v3 $version
replace github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
replace github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
replace github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595
exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible
EOT
  go get "github.com/traefik/traefik/v3/cmd/traefik@$version"
  go build -trimpath -ldflags "-s -w" -o out/traefik github.com/traefik/traefik/v3/cmd/traefik
  # The CRDs of this very version, from its module zip (applied server-side by the stack).
  moddir=$(go list -m -f '{{.Dir}}' github.com/traefik/traefik/v3)
  cp "$moddir/docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml" out/traefik-crds.yml
  ;;
helm)
  # Helm 4's go.mod has no replaces, so a plain wrapper module resolves it; the version
  # ldflag makes `helm version` report the pinned version instead of v4-unknown.
  go mod init local/helm >/dev/null 2>&1
  go get "helm.sh/helm/v4/cmd/helm@$version"
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" -o out/helm helm.sh/helm/v4/cmd/helm
  ;;
*)
  echo "unknown component: $component" >&2
  exit 2
  ;;
esac

mkdir -p "$dest/bin"
mv out/* "$dest/bin/"
echo "built $component $version into $dest/bin"
