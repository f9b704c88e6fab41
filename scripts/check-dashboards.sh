#!/usr/bin/env bash
# Checks dashboards/: the alert rules (promtool check rules), their unit tests
# (promtool test rules) and every PromQL expression of the Grafana dashboard (each one compiled
# by promtool as a recording rule, after Grafana variables are replaced by concrete values).
# Installs promtool with apt-get (Debian package `prometheus`) if it is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=dashboards
RULES="$DIR/alerts.yml"
TESTS="$DIR/alerts.test.yml"
DASHBOARD="$DIR/wxpay-recon.json"

die() {
    echo "check-dashboards: $*" >&2
    exit 1
}

install_promtool() {
    command -v apt-get >/dev/null 2>&1 || die "promtool is not installed and apt-get is not available: install Prometheus' promtool (https://prometheus.io/download/) and put it on PATH"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "promtool is not installed; installing it needs root or sudo (apt-get install -y prometheus)"
        sudo=(sudo)
    fi
    echo "check-dashboards: installing promtool (apt-get install -y prometheus)" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
        || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2 \
        || die "apt-get install prometheus failed"
    # The package starts a Prometheus server where an init system runs; we only want promtool.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null 2>&1 || die "apt-get installed prometheus but promtool is still not on PATH"
}

command -v promtool >/dev/null 2>&1 || install_promtool
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read $DASHBOARD"
for f in "$RULES" "$TESTS" "$DASHBOARD"; do
    [ -f "$f" ] || die "missing $f"
done
echo "check-dashboards: $(promtool --version 2>&1 | head -n 1)"

echo "== promtool check rules $RULES"
promtool check rules "$RULES" || die "alert rules in $RULES are invalid"

echo "== promtool test rules $TESTS"
promtool test rules "$TESTS" || die "alert unit tests in $TESTS failed"

echo "== PromQL expressions in $DASHBOARD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One file per expression: expr_N.yml (a recording rule) and expr_N.txt (where it came from).
python3 - "$DASHBOARD" "$work" <<'PY'
import json, re, sys

dashboard_path, out = sys.argv[1], sys.argv[2]
with open(dashboard_path, encoding="utf-8") as f:
    dashboard = json.load(f)

# Grafana's time variables become a duration; any other variable ($job, ${instance},
# [[var]], ${var:regex}) only appears inside label matchers, where ".*" is a valid value.
TIME_VARS = re.compile(r"\$\{?__(rate_interval|interval|range|interval_ms|range_s|range_ms)\}?")
OTHER_VARS = re.compile(r"\$\{[A-Za-z0-9_]+(:[A-Za-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

n = 0
for panel in panels(dashboard.get("panels", [])):
    for target in panel.get("targets", []):
        expr = target.get("expr")
        if expr is None:
            continue
        n += 1
        concrete = OTHER_VARS.sub(".*", TIME_VARS.sub("5m", expr))
        where = f'panel "{panel.get("title", "?")}" (id {panel.get("id")}) target {target.get("refId", "?")}'
        with open(f"{out}/expr_{n}.txt", "w", encoding="utf-8") as f:
            f.write(f"{where}\n  expr: {expr}\n  checked as: {concrete}\n")
        rule = {"groups": [{"name": "dashboard", "rules": [{"record": f"check:expr_{n}", "expr": concrete}]}]}
        with open(f"{out}/expr_{n}.yml", "w", encoding="utf-8") as f:
            json.dump(rule, f)  # JSON is YAML
if n == 0:
    sys.exit(f"no PromQL expression found in {dashboard_path}")
PY

total=0
bad=0
for rules in "$work"/expr_*.yml; do
    total=$((total + 1))
    if ! output="$(promtool check rules "$rules" 2>&1)"; then
        bad=$((bad + 1))
        echo "BAD PromQL:" >&2
        sed 's/^/  /' "${rules%.yml}.txt" >&2
        echo "$output" | grep -v '^Checking ' | sed 's/^/    promtool: /' >&2
    fi
done
[ "$bad" -eq 0 ] || die "$bad of $total dashboard expression(s) are not valid PromQL (listed above)"
echo "  SUCCESS: $total expressions valid"
echo "check-dashboards: OK"
