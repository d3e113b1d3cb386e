"""One settings module, driven by environment variables (12-factor).

`DJANGO_ENV=production` switches on the hardened mode: it refuses to start without a real
SECRET_KEY and passes `manage.py check --deploy --fail-level WARNING`.
Zero-setup default: SQLite and a filesystem Celery broker; set DATABASE_URL / REDIS_URL
to use PostgreSQL / Redis instead.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DJANGO_ENV = os.environ.get("DJANGO_ENV", "development")
PRODUCTION = DJANGO_ENV == "production"
DEBUG = env_bool("DJANGO_DEBUG", default=not PRODUCTION)

_INSECURE_KEY = "django-insecure-dev-only-never-use-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY", "" if PRODUCTION else _INSECURE_KEY)
if PRODUCTION and (len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure")):
    raise ImproperlyConfigured(
        "DJANGO_ENV=production needs a real SECRET_KEY (50+ random characters), e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(64))'"
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_celery_beat",
    "core",
    "events",
    "vehicles",
    "billing",
    "reports",
    "django_prometheus",
    "pgtrigger",
    "pghistory",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # first: times the whole request
    "core.logging.RequestIdMiddleware",  # every log line of a request carries its id
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "reports.audit.AuditContextMiddleware",  # who, which URL and request id, on every audit event
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",  # last
]

ROOT_URLCONF = "config.urls"
# Admin messages may carry a just-issued vehicle secret: keep them server-side, not in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The demo's web threads and Celery worker write at once: writers must wait, not fail with
    # "database is locked" (after Stripe charged). WAL lets readers run beside the one writer;
    # BEGIN IMMEDIATE takes the write lock when a transaction starts, so a transaction that read
    # first never fails to upgrade to a writer (a busy timeout cannot help there); writers queue
    # for up to 20 s (`timeout`, SQLite's busy timeout).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# Several test sessions (helpers, CI) may share one PostgreSQL server: a suffix keeps them apart.
DATABASES["default"]["TEST"] = {
    "NAME": f"test_billing{os.environ.get('TEST_DB_SUFFIX', '')}",
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- Security (production) -------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 365))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DJANGO_ENV=production needs ALLOWED_HOSTS (comma-separated).")

# --- Metrics (reports/metrics.py) -----------------------------------------------------
# /metrics answers a staff session or `Authorization: Bearer $METRICS_TOKEN` (empty: no token).
# Under gunicorn with several workers set PROMETHEUS_MULTIPROC_DIR (config/gunicorn_conf.py does).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# --- Audit history (reports/models.py): PostgreSQL triggers, installed by `migrate` ------------
# Triggers are installed from the registry on every migrate (PostgreSQL only; none on SQLite)
# instead of living in the tracked apps' migrations.
PGTRIGGER_MIGRATIONS = False
PGTRIGGER_INSTALL_ON_MIGRATE = True

# --- REST API --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "core.api_schema.ContractSchema",  # error envelope, headers, tags per resource
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PARSER_CLASSES": [
        "core.api.JSONParser",  # bounded: no RecursionError, 413 over the upload limit
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.api.LimitOffsetPagination",  # limit <= 200, offset bounded
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # DRF's own throttles (none configured) would read it too; ours use core.ratelimit.client_address
    "NUM_PROXIES": int(os.environ.get("NUM_PROXIES", 0)),
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=int(os.environ.get("JWT_ACCESS_MINUTES", 10))),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=int(os.environ.get("JWT_REFRESH_DAYS", 30))),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "SIGNING_KEY": os.environ.get("JWT_SIGNING_KEY", SECRET_KEY),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "In-car services billing API",
    "DESCRIPTION": "Offers, purchases, subscriptions and entitlements for connected vehicles.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Request bodies are documented as JSON only (the form parsers stay for browsers and admin tools)
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # operation ids (a generated client's function names) without the version: `me_vehicles_list`
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Swagger UI and Redoc from our own static files (drf-spectacular-sidecar), no CDN
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery ----------------------------------------------------------------------------
# Invariants (tests/billing/test_tasks.py): late acks, a task given back to the broker when its
# worker dies, one message prefetched per process, a hard time limit on every task, and a Redis
# visibility timeout longer than the longest time limit plus the longest retry countdown (else
# Redis hands a running task to a second worker). Due times live in PostgreSQL, never as ETAs.
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_TASK_TIME_LIMIT = 300  # the default hard limit; billing tasks set their own, lower
CELERY_TASK_SOFT_TIME_LIMIT = 280
CELERY_TASK_MAX_COUNTDOWN_SECONDS = 300  # core.task_failures.RETRY_BACKOFF_MAX_SECONDS
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT_SECONDS", 3600)),
    }
else:
    # A broker that needs no server: messages are files under var/celery (demo only).
    CELERY_BROKER_URL = "filesystem://"
    _broker_dir = VAR_DIR / "celery"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # broadcast/pidbox files, not in the repo root
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# --- Cache and abuse limits -------------------------------------------------------------
# Rate-limit counters must be atomic across processes: Redis INCR when REDIS_URL is set.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"billing{os.environ.get('TEST_DB_SUFFIX', '')}",
        }
        if REDIS_URL
        # no Redis (the demo): files, shared by the web process and the Celery worker
        else {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    )
}
# Reverse proxies in front of the app that append to X-Forwarded-For. 0 (the default): the client
# address is REMOTE_ADDR and X-Forwarded-For is ignored; N: the Nth address from its right.
NUM_PROXIES = int(os.environ.get("NUM_PROXIES", 0))
# requests per window, per owner (checkout) or per vehicle (entitlement token), per address (login)
RATE_LIMITS = {
    "checkout": os.environ.get("RATE_LIMIT_CHECKOUT", "20/minute"),
    "entitlement_token": os.environ.get("RATE_LIMIT_ENTITLEMENT_TOKEN", "60/minute"),
    "login": os.environ.get("RATE_LIMIT_LOGIN", "10/minute"),
}

# --- Stripe ----------------------------------------------------------------------------
# With no STRIPE_SECRET_KEY the gateway talks to localstripe on loopback (STRIPE_API_BASE): by default
# through the proxy `make run` puts in front of it (port 8421), which honours idempotency keys as
# Stripe does (localstripe itself, on 8420, ignores them).
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "http://127.0.0.1:8421")
STRIPE_TIMEOUT_SECONDS = float(os.environ.get("STRIPE_TIMEOUT_SECONDS", 10))
STRIPE_MAX_NETWORK_RETRIES = int(os.environ.get("STRIPE_MAX_NETWORK_RETRIES", 2))
# Comma-separated: several secrets are accepted while one is rotated. Outside production a fixed
# demo secret lets `make run` register the endpoint with localstripe.
STRIPE_WEBHOOK_SECRET = os.environ.get(
    "STRIPE_WEBHOOK_SECRET", "" if PRODUCTION else "whsec_localstripe_demo"
)
# The request budget every process shares (core/ratebudget.py, a token bucket in Redis): Stripe
# allows 25 requests/s in test mode and 100/s live; we stay under it so a 429 never comes. 0: off.
STRIPE_RATE_LIMIT_PER_SECOND = float(
    os.environ.get(
        "STRIPE_RATE_LIMIT_PER_SECOND",
        25 if not STRIPE_SECRET_KEY or STRIPE_SECRET_KEY.startswith("sk_test_") else 80,
    )
)
# A request that would wait longer than this for its slot is not sent: handled as a 429.
STRIPE_RATE_BUDGET_MAX_WAIT_SECONDS = float(os.environ.get("STRIPE_RATE_BUDGET_MAX_WAIT_SECONDS", 10))

# Outgoing events (events/): endpoints on private or local addresses only where allowed (SSRF).
EVENTS_ALLOW_PRIVATE_URLS = env_bool("EVENTS_ALLOW_PRIVATE_URLS", not PRODUCTION)

# --- Entitlement tokens ----------------------------------------------------------------
ENTITLEMENT_TOKEN_ISSUER = os.environ.get("ENTITLEMENT_TOKEN_ISSUER", "https://billing.example.com")
ENTITLEMENT_TOKEN_MAX_TTL = timedelta(hours=int(os.environ.get("ENTITLEMENT_TOKEN_MAX_HOURS", 72)))

# --- Logging (structured JSON via structlog) -------------------------------------------
from core.logging import configure_logging  # noqa: E402

LOGGING_CONFIG = None
configure_logging(level=os.environ.get("LOG_LEVEL", "INFO"), json=env_bool("LOG_JSON", True))
