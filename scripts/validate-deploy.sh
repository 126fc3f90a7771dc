#!/usr/bin/env bash
# Validates the deployment files (deploy/, Dockerfile, .dockerignore) offline: the Kubernetes
# manifests and the rendered Helm chart against the Kubernetes schemas, docker-compose, Prometheus
# and Grafana provisioning, and the chart's values and templates. See deploy/validate.py.
#
# Installs kubernetes-validate and PyYAML (from PyPI) into a virtualenv under target/ the first
# time; later runs reuse it and need no network. Prints one line per check, then
# "N passed, M failed"; exits non-zero when a check failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=target/deploy-venv
KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.3

if ! "$VENV/bin/python" -c "
import sys, yaml, kubernetes_validate
sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE_VERSION')
" 2>/dev/null; then
    echo "validate-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "pyyaml==$PYYAML_VERSION"
fi

exec "$VENV/bin/python" deploy/validate.py "$@"
