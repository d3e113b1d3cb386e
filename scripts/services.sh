# Sourced by scripts: make sure PostgreSQL and Redis answer on loopback, starting them when they are
# installed but stopped, and saying how to install them when they are missing.

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    echo "PostgreSQL is stopped: starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -n1)" main start || true
  elif command -v pg_ctl >/dev/null 2>&1 && [ -n "${PGDATA:-}" ]; then
    pg_ctl -D "$PGDATA" -l "$PGDATA/server.log" start || true
  else
    echo "PostgreSQL is not installed. Install it, e.g.: sudo apt-get install postgresql" >&2
    echo "(or point DATABASE_URL at a running server)" >&2
    return 1
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; return 1
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  if command -v redis-server >/dev/null 2>&1; then
    echo "Redis is stopped: starting it"
    mkdir -p /tmp/redis-billing
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/redis-billing --logfile /tmp/redis-billing/redis.log
  else
    echo "Redis is not installed. Install it, e.g.: sudo apt-get install redis-server" >&2
    echo "(or point REDIS_URL at a running server)" >&2
    return 1
  fi
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 1; done
  echo "Redis did not come up on 127.0.0.1:6379" >&2; return 1
}

# The browser test (tests/test_browser_admin.py) drives Debian's chromium through Playwright; it
# never downloads Playwright's own browsers. Installed here when missing and we may (root).
ensure_chromium() {
  local bin="${CHROMIUM_PATH:-/usr/bin/chromium}"
  if [ -x "$bin" ]; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing: installing it (apt-get install chromium)"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }; then
      [ -x "$bin" ] && return 0
    fi
    echo "Installing chromium failed: the browser test will fail." >&2
  else
    echo "chromium is not installed (the browser test needs it). Install it, e.g.: sudo apt-get install chromium" >&2
    echo "(or set CHROMIUM_PATH to a Chromium/Chrome binary)" >&2
  fi
  return 0  # the browser test fails loudly without it; the rest of the suite still runs
}
