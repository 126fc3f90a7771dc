#!/usr/bin/env bash
# Validates the deployment files (deploy/, Dockerfile, .dockerignore) offline: the Helm chart
# rendered the way `helm template` renders it and checked against the Kubernetes schemas,
# docker-compose, Prometheus and Grafana provisioning, and the chart's values. See
# deploy/validate.py.
#
# The chart is rendered by deploy/render (Go's text/template with sprig, as in Helm), built into
# target/deploy-render from Debian's Go packages; the checks run in a virtualenv under target/
# with kubernetes-validate and PyYAML from PyPI. The first run installs what is missing (apt-get
# as root or through sudo, then pip); later runs need no network. Prints one line per check,
# then "N passed, M failed"; exits non-zero when a check failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=target/deploy-venv
KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.3
GOCODE=/usr/share/gocode/src

source scripts/lib/packages.sh

# Debian's packages: Go, and the Go libraries Helm renders with (sprig, sigs.k8s.io/yaml).
missing=()
command -v go >/dev/null || missing+=(golang-go)
[ -d "$GOCODE/github.com/Masterminds/sprig" ] || missing+=(golang-github-masterminds-sprig-dev)
[ -d "$GOCODE/sigs.k8s.io/yaml" ] || missing+=(golang-k8s-sigs-yaml-dev)
python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
install_packages validate-deploy "${missing[@]}"

# The renderer, built in GOPATH mode against Debian's libraries (offline, no module download).
# Its go.mod only lets the GOPATH build resolve sprig's /v3 import path; the package is copied
# into a GOPATH of its own under target/ so nothing is written beside the sources.
TARGET="$PWD/target"
mkdir -p "$TARGET/deploy-gopath/src/deploy-render"
cp deploy/render/main.go deploy/render/go.mod "$TARGET/deploy-gopath/src/deploy-render/"
(cd "$TARGET/deploy-gopath/src/deploy-render" &&
    env GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local \
        GOPATH="$TARGET/deploy-gopath:/usr/share/gocode" GOCACHE="$TARGET/deploy-go-cache" \
        go build -o "$TARGET/deploy-render" .)

if ! "$VENV/bin/python" -c "
import sys, yaml, kubernetes_validate
sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE_VERSION')
" 2>/dev/null; then
    echo "validate-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "pyyaml==$PYYAML_VERSION"
fi

exec "$VENV/bin/python" deploy/validate.py --render target/deploy-render "$@"
