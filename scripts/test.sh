#!/usr/bin/env bash
# `make test`: PostgreSQL + Redis up, ruff, mypy, then the whole pytest suite against PostgreSQL.
# Extra arguments go to pytest (make test ARGS="-k money").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/billing}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/15}"
case "$DATABASE_URL" in postgres*) ensure_postgres ;; esac
case "$REDIS_URL" in redis*) ensure_redis ;; esac
ensure_chromium

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy (targets and strictness: [tool.mypy] in pyproject.toml)"
.venv/bin/mypy
echo "== migrations are up to date"
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null \
  || { echo "Model changes without a migration: run .venv/bin/python manage.py makemigrations" >&2; exit 1; }
echo "== production settings pass check --deploy"
DJANGO_ENV=production SECRET_KEY="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(64))')" \
  ALLOWED_HOSTS=billing.example.com .venv/bin/python manage.py check --deploy --fail-level WARNING
echo "== pytest (database: ${DATABASE_URL%%://*} at ${DATABASE_URL##*@}, broker: ${REDIS_URL%%://*} at ${REDIS_URL##*@})"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; fi
exit "$rc"
