#!/usr/bin/env bash
# Checks the Helm chart the way CI does, with the real helm CLI:
#   - helm lint, with the defaults and with every example's values;
#   - every example re-rendered and compared with its committed rendered/
#     folder (--update rewrites them and the README's values table);
#   - the rendered manifests validated with kubernetes-validate --strict
#     against Kubernetes 1.20 and a current release;
#   - bad values refused by values.schema.json with the schema's message;
#   - Chart.yaml's appVersion equal to the agent crate's version, and the
#     README's values table equal to values.yaml.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=/var/cache/gmon-agent
chart=charts/gmon-agent
update=${1:-}
"$root/scripts/build-k8s.sh" # helm (cached after the first run)
helm=$cache/k8s/bin/helm
export HELM_CACHE_HOME=$cache/helm/cache HELM_CONFIG_HOME=$cache/helm/config HELM_DATA_HOME=$cache/helm/data
# kubernetes-validate bundles the schemas of recent releases only: 1.37.0
# has 1.25-1.37, 1.24.1 has 1.10-1.24. One virtualenv each, from PyPI.
venv() { # dir version
  if ! "$1/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    python3 -m venv "$1"
    "$1/bin/pip" install -q "kubernetes-validate==$2"
  fi
}
venv "$cache/pyenv" 1.37.0
venv "$cache/pyenv-kv1.24" 1.24.1
py=$cache/pyenv/bin/python
# Kubernetes 1.20 (the test node) and the newest schema there is.
validators=("1.20.0 $cache/pyenv-kv1.24/bin/kubernetes-validate" "1.37.0 $cache/pyenv/bin/kubernetes-validate")

passed=0 failed=0
check() { # name command...
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; printf '%s\n' "$out" | sed 's/^/     /' | head -30
  fi
}
refused() { # expected-message helm-args...
  local want=$1; shift
  local out
  if out=$("$helm" template x "$chart" "$@" 2>&1); then
    echo "rendered although it should have been refused"; return 1
  fi
  grep -qF -- "$want" <<<"$out" || { echo "refused without '$want':"; echo "$out"; return 1; }
}

render() { # example-dir out-dir
  local tmp; tmp=$(mktemp -d)
  "$helm" template gmon-agent "$chart" --namespace monitoring -f "$1/values.yaml" \
    --output-dir "$tmp" >/dev/null
  rm -rf "$2" && mkdir -p "$2"
  cp "$tmp"/gmon-agent/templates/* "$2/"
  rm -rf "$tmp"
}
rendered_fresh() { # example-dir
  local tmp; tmp=$(mktemp -d)
  render "$1" "$tmp/r"
  diff -ru "$1/rendered" "$tmp/r" || { rm -rf "$tmp"; echo "stale: run scripts/chart-check.sh --update"; return 1; }
  rm -rf "$tmp"
}
validate_rendered() { # example-dir version validator
  # ServiceMonitor and PrometheusRule are CRDs kubernetes-validate has no
  # schema for.
  local files=()
  for f in "$1"/rendered/*.yaml; do
    grep -q '^kind: \(ServiceMonitor\|PrometheusRule\)' "$f" || files+=("$f")
  done
  "$3" --strict --quiet -k "$2" "${files[@]}"
}
app_version_matches() {
  local crate chart_v
  crate=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  chart_v=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$chart/Chart.yaml")
  [ "$crate" = "$chart_v" ] || { echo "appVersion $chart_v != crate version $crate"; return 1; }
}
only_pods_list_watch() {
  local r=$chart/examples/default/rendered/clusterrole.yaml
  grep -q 'resources: \["pods"\]' "$r" && grep -q 'verbs: \["list", "watch"\]' "$r" &&
    [ "$(grep -c 'verbs:' "$r")" = 1 ]
}

if [ "$update" = --update ]; then
  for ex in "$chart"/examples/*/; do render "${ex%/}" "${ex%/}/rendered"; done
  "$py" scripts/lib/values-table.py "$chart/values.yaml" README.md --write
  echo "chart-check: examples and README values table rewritten"
fi

check "helm lint (defaults)" "$helm" lint --strict "$chart"
for ex in "$chart"/examples/*/; do
  ex=${ex%/} name=$(basename "$ex")
  check "helm lint ($name)" "$helm" lint --strict "$chart" -f "$ex/values.yaml"
  check "rendered example is fresh ($name)" rendered_fresh "$ex"
  for v in "${validators[@]}"; do
    set -- $v
    check "kubernetes-validate --strict $1 ($name)" validate_rendered "$ex" "$1" "$2"
  done
done
check "values table in README matches values.yaml" \
  "$py" scripts/lib/values-table.py "$chart/values.yaml" README.md --check
check "appVersion is the crate version" app_version_matches
check "the chart's rules are deploy/'s" cmp deploy/prometheus/gmon-agent-rules.yaml "$chart/files/gmon-agent-rules.yaml"
check "the chart's dashboard is deploy/'s" cmp deploy/grafana/gmon-agent.json "$chart/files/gmon-agent.json"
check "RBAC is pods: list, watch only" only_pods_list_watch
check "refuses an unsupported protocol" refused "otlp.protocol must be one of the following" --set otlp.protocol=udp
check "refuses an unknown key" refused "Additional property colour is not allowed" --set colour=blue
check "refuses a wrong type" refused "Expected: integer, given: string" --set metrics.port=abc
check "refuses an endpoint without a scheme" refused "otlp.endpoint: Does not match pattern" --set otlp.endpoint=collector:4317
check "refuses a ServiceMonitor without its Service" refused "needs metrics.service.enabled" \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
echo "chart: $passed passed, $failed failed"
[ "$failed" = 0 ]
