#!/usr/bin/env bash
# Builds the upstream control-plane programs the vacate testbed runs:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok
# from their Go modules (see the wrapper modules beside this script).
#
# Binaries go to a cache folder outside the repository, keyed by a hash of the
# wrapper modules and this script:
#   ${VACATE_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vacate-testbed}/<hash>/bin
# A complete folder is reused as is. The last line printed on stdout is the bin folder.
#
# Environment:
#   VACATE_TESTBED_CACHE  cache root (see above)
#   TESTBED_GO_NICE       niceness for the Go builds (default 10)
#   TESTBED_GO_PARALLEL   go build -p (default: number of cores)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# Kubernetes version the wrapper module pins; discovery and kubelet versions report it.
KUBE_VERSION="v1.37.2"
KUBE_MAJOR="1"
KUBE_MINOR="37"
KWOK_VERSION="v0.8.0"
ETCD_VERSION="v3.7.3"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

hash_inputs() {
  # go version is part of the key: a new toolchain builds new binaries.
  {
    go env GOVERSION
    for f in build.sh cluster/go.mod cluster/go.sum cluster/tools.go \
      etcd/go.mod etcd/go.sum etcd/main.go kwok/go.mod kwok/go.sum kwok/tools.go; do
      echo "== $f"
      cat "$f"
    done
  } | sha256sum | cut -c1-16
}

cache_root="${VACATE_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vacate-testbed}"
key="$(hash_inputs)"
out="$cache_root/$key"
bin="$out/bin"

complete() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$bin/$b" ]] || return 1
  done
  [[ -f "$out/.complete" ]]
}

if complete; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
nice_level="${TESTBED_GO_NICE:-10}"
parallel="${TESTBED_GO_PARALLEL:-$(nproc)}"
# Module downloads must never be edited in place, and VCS stamping needs a
# checkout we do not have.
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
export CGO_ENABLED=0

gobuild() {
  # gobuild <module dir> <output name> <package> [ldflags]
  local dir="$1" name="$2" pkg="$3" ldflags="${4:-}"
  local started=$SECONDS
  echo "building $name ($pkg)" >&2
  (cd "$here/$dir" && nice -n "$nice_level" go build -p "$parallel" -trimpath \
    -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "built $name in $((SECONDS - started))s" >&2
}

vpkg="k8s.io/component-base/version"
kube_ldflags="-X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=$KUBE_MAJOR -X $vpkg.gitMinor=$KUBE_MINOR \
-X $vpkg.gitTreeState=clean -X $vpkg.gitCommit=0000000000000000000000000000000000000000 \
-X $vpkg.buildDate=1970-01-01T00:00:00Z"
# client-go's own version copy (used for the User-Agent of the components).
kube_ldflags="$kube_ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION \
-X k8s.io/client-go/pkg/version.gitMajor=$KUBE_MAJOR -X k8s.io/client-go/pkg/version.gitMinor=$KUBE_MINOR"

total_started=$SECONDS
gobuild etcd etcd .
gobuild kwok kwok sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} \
-X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  gobuild cluster "$cmd" "k8s.io/kubernetes/cmd/$cmd" "$kube_ldflags"
done

cat >"$out/versions.txt" <<EOF
kubernetes $KUBE_VERSION
etcd $ETCD_VERSION
kwok $KWOK_VERSION
$(go env GOVERSION)
EOF
touch "$out/.complete"
echo "all binaries built in $((SECONDS - total_started))s" >&2
echo "$bin"
