#!/usr/bin/env bash
# Runs the whole workspace test suite against a real Redis.
# The integration tests start their own throwaway redis-server processes
# (see tests/src), so only the binaries are needed; this installs them if
# missing. Extra arguments are passed to the first `cargo test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Install redis-server and redis-cli (Debian/Ubuntu packages) if absent, and openssl, with
# which the TLS test makes its throwaway certificate authority.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
    || ! command -v openssl >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null; then
        SUDO="sudo"
    else
        echo "redis-server/redis-cli are missing and we are neither root nor have sudo;" >&2
        echo "install the redis-server and redis-tools packages, then rerun." >&2
        exit 1
    fi
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools openssl
fi

# Deployment files (the Helm chart rendered and checked against the Kubernetes schemas,
# compose, Grafana and Prometheus provisioning); on first use installs Debian's Go and the
# chart renderer's libraries, and kubernetes-validate from PyPI into target/deploy-venv.
scripts/validate-deploy.sh

# Unit, integration and example/bench targets, then doctests (which
# --all-targets does not include).
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
