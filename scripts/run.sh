#!/usr/bin/env bash
# `make run`: migrate, load demo data, start localstripe behind the idempotency proxy (loopback), a
# Celery worker, Celery beat and the API + admin on http://127.0.0.1:8000. Ctrl-C stops everything
# this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p var/celery/out var/celery/processed var/celery/control var/log
export LOG_JSON="${LOG_JSON:-false}"
STRIPE_PORT="${LOCALSTRIPE_PORT:-8420}"
PROXY_PORT="${STRIPE_PROXY_PORT:-8421}"
PORT="${PORT:-8000}"

pids=()
# Each side process runs in its own process group (setsid), so stopping it also stops its children
# (Celery's pool processes), even if they outlive their parent.
cleanup() {
  trap - INT TERM EXIT
  trap "" PIPE  # keep stopping even if our output pipe (e.g. | tee) is gone
  echo; echo "Stopping ${#pids[@]} processes..."
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  echo "Stopped."
}
trap cleanup INT TERM EXIT

wait_for_stripe() {
  for _ in $(seq 1 50); do
    curl -sf -o /dev/null -u sk_test_demo: "$1/v1/customers" && return 0; sleep 0.2
  done
  echo "No answer from $1 (see var/log/)" >&2; return 1
}

if [ -z "${STRIPE_SECRET_KEY:-}" ]; then
  # localstripe ignores Idempotency-Key: the proxy in front of it replays a repeated key as Stripe
  # does (the same one the tests use), so a retried charge or refund is never executed twice.
  LOCALSTRIPE_URL="http://127.0.0.1:${STRIPE_PORT}"
  export STRIPE_API_BASE="http://127.0.0.1:${PROXY_PORT}"
  echo "[1/5] No STRIPE_SECRET_KEY: localstripe on ${LOCALSTRIPE_URL} behind the idempotency proxy on ${STRIPE_API_BASE} (logs: var/log/localstripe.log, var/log/stripe-proxy.log)"
  setsid $PY -m devtools.localstripe_server --port "$STRIPE_PORT" >var/log/localstripe.log 2>&1 &
  pids+=($!)
  wait_for_stripe "$LOCALSTRIPE_URL"
  setsid $PY -m devtools.stripe_proxy --upstream "$LOCALSTRIPE_URL" --port "$PROXY_PORT" >var/log/stripe-proxy.log 2>&1 &
  pids+=($!)
  wait_for_stripe "$STRIPE_API_BASE"
  # localstripe delivers signed webhooks (e.g. payment_intent.succeeded after 3-D Secure) to us
  export STRIPE_WEBHOOK_SECRET="${STRIPE_WEBHOOK_SECRET:-whsec_localstripe_demo}"
  curl -sf -o /dev/null -X POST "$LOCALSTRIPE_URL/_config/webhooks/billing" \
    --data-urlencode "url=http://127.0.0.1:${PORT}/webhooks/stripe/" \
    --data-urlencode "secret=${STRIPE_WEBHOOK_SECRET}" \
    && echo "      localstripe sends its webhooks to http://127.0.0.1:${PORT}/webhooks/stripe/"
else
  echo "[1/5] Using real Stripe (STRIPE_SECRET_KEY is set)"
fi

echo "[2/5] Database: ${DATABASE_URL:-sqlite (var/db.sqlite3)}; broker: ${REDIS_URL:-filesystem (var/celery)}"
$PY manage.py migrate --no-input -v 0
$PY manage.py collectstatic --no-input -v 0
echo "[3/5] Loading demo data (idempotent)"
$PY manage.py seed_demo
$PY manage.py install_schedules

echo "[4/5] Starting Celery worker and beat (logs: var/log/celery-*.log)"
setsid .venv/bin/celery -A config worker --loglevel=INFO --concurrency=2 >var/log/celery-worker.log 2>&1 &
pids+=($!)
setsid .venv/bin/celery -A config beat --loglevel=INFO >var/log/celery-beat.log 2>&1 &
pids+=($!)

cat <<MSG
[5/5] Serving on http://127.0.0.1:${PORT}
  Admin:        http://127.0.0.1:${PORT}/admin/          (login: admin / admin)
  API docs:     http://127.0.0.1:${PORT}/api/docs/
  API schema:   http://127.0.0.1:${PORT}/api/schema/
  Health:       http://127.0.0.1:${PORT}/healthz
  Demo owner:   anna@example.com / demo-password-1   (see README "Try the API")
Press Ctrl-C to stop everything.
MSG
setsid $PY manage.py runserver "127.0.0.1:${PORT}" --noreload &
pids+=($!)
wait -n "${pids[@]}"
