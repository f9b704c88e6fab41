#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   1. makes sure PostgreSQL and Redis are reachable (starting them if installed, installing
#      them with apt-get if missing) -- a service that cannot be brought up is a loud failure;
#   2. checks formatting and lints (warnings are errors);
#   3. runs every test (unit, integration on both profiles, crash tests with real processes);
#   4. runs the README's demo command as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=${WXPAY_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${WXPAY_TEST_PG_PORT:-5432}
REDIS_PORT=${WXPAY_TEST_REDIS_PORT:-6379}
export WXPAY_TEST_DATABASE_URL=${WXPAY_TEST_DATABASE_URL:-postgres://postgres@${PG_HOST}:${PG_PORT}/postgres}
export WXPAY_TEST_REDIS_URL=${WXPAY_TEST_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}}

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
wait_for() { # wait_for <what> <command...>
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "FATAL: $what is not reachable; the cluster-profile tests need it" >&2
  exit 1
}

ensure_postgres() {
  if pg_isready -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; then return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql postgresql-contrib; fi
  say "starting PostgreSQL"
  local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL pg_isready -h "$PG_HOST" -p "$PG_PORT"
  # Tests connect as postgres over TCP without a password (local, throwaway databases).
  if ! psql "$WXPAY_TEST_DATABASE_URL" -c 'select 1' >/dev/null 2>&1; then
    local hba; hba=$(ls /etc/postgresql/"$version"/main/pg_hba.conf)
    as_root sed -i 's/^\(host\s\+all\s\+all\s\+127.0.0.1\/32\s\+\)\S\+/\1trust/' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
  wait_for "PostgreSQL (login)" psql "$WXPAY_TEST_DATABASE_URL" -c 'select 1'
}

ensure_redis() {
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  if ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server; fi
  say "starting Redis"
  mkdir -p /tmp/wxpay-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/wxpay-redis --logfile /tmp/wxpay-redis/redis.log
  wait_for Redis redis-cli -p "$REDIS_PORT" ping
}

command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
ensure_postgres
ensure_redis
# Redis is shared: drop what earlier runs' tests and benchmarks left under their own prefixes.
for pattern in 'wxpay-test-*' 'wxpay-bench-*'; do
  redis-cli -p "$REDIS_PORT" --scan --pattern "$pattern" | xargs -r -n 5000 redis-cli -p "$REDIS_PORT" del >/dev/null
done

say "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

say "dashboards and alert rules (promtool)"
scripts/check-dashboards.sh

say "tests"
[ "$(ulimit -n)" -ge 4096 ] || ulimit -n 4096  # the slowloris test holds 2,000 sockets (it fails below)
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast --config-file scripts/nextest.toml
else
  cargo test --locked --no-fail-fast
fi

say "demo smoke test (the README's first command)"
demo_dir=$(mktemp -d)
WXPAY_RECON__DATABASE__URL="sqlite://$demo_dir/data.sqlite" \
WXPAY_RECON__QUEUE__URL="sqlite://$demo_dir/queue.sqlite" \
WXPAY_RECON__WECHAT__DEV_KEYS_DIR="$demo_dir/dev-keys" \
  cargo run --locked --quiet -- demo --orders 5
rm -rf "$demo_dir"
say "all green"
