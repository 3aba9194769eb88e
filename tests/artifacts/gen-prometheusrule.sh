#!/usr/bin/env bash
# Writes deploy/prometheusrule.yaml: a PrometheusRule whose spec is alerts/vacate.rules.yaml,
# unchanged (a Prometheus rule file and a PrometheusRule spec share the `groups:` format).
# With --stdout, prints it instead (check.sh compares the two).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
generate() {
  cat <<'HEADER'
# Generated from alerts/vacate.rules.yaml by tests/artifacts/gen-prometheusrule.sh: edit that
# file and run the script; tests/artifacts/check.sh fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: vacate
  labels:
    app.kubernetes.io/name: vacate
spec:
HEADER
  sed -e 's/^\(.\)/  \1/' "$root/alerts/vacate.rules.yaml"
}
if [[ "${1:-}" == "--stdout" ]]; then
  generate
else
  generate >"$root/deploy/prometheusrule.yaml"
fi
