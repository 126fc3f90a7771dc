#!/usr/bin/env bash
# Runs the whole workspace test suite against a real Redis.
# The integration tests start their own throwaway redis-server processes
# (see tests/src), so only the binaries are needed; this installs them if
# missing. Extra arguments are passed to the first `cargo test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Install redis-server and redis-cli (Debian/Ubuntu packages) if absent, and openssl, with
# which the TLS test makes its throwaway certificate authority.
source scripts/lib/packages.sh
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v openssl >/dev/null || missing+=(openssl)
install_packages test.sh "${missing[@]}"

# Deployment files (the Helm chart rendered and checked against the Kubernetes schemas,
# compose, Grafana and Prometheus provisioning); on first use installs Debian's Go and the
# chart renderer's libraries, and kubernetes-validate from PyPI into target/deploy-venv.
scripts/validate-deploy.sh

# Unit, integration and example/bench targets, then doctests (which
# --all-targets does not include).
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
