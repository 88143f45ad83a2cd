"""One settings module, driven by the environment.

With nothing set: SQLite, the in-memory channel layer and eager Celery (the embedded
default). With ``DATABASE_URL`` and ``REDIS_URL``: Postgres, the Redis channel layer
and real Celery workers.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ

from interledger_site.secrets import load_or_create

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("ILP_VAR_DIR", default=str(BASE_DIR / "var")))
_local_secrets = load_or_create(VAR_DIR / "secrets.json")

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_local_secrets["SECRET_KEY"])
# Off unless asked for (``make run`` asks): a debug 500 page shows settings and locals.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS (``check --deploy``) ---------------------------------------------------------------
# ``DJANGO_SECURE=1`` (default: on when ILP_PUBLIC_URL is https) says the site is served over
# HTTPS by a proxy in front of Daphne: secure cookies, HSTS, the redirect to https, and the
# proxy's ``X-Forwarded-Proto`` trusted. Each part can be turned off on its own.
_PUBLIC_URL = env.str("ILP_PUBLIC_URL", default="")
_https = env.bool("DJANGO_SECURE", default=_PUBLIC_URL.lower().startswith("https://"))
SESSION_COOKIE_SECURE = _https
CSRF_COOKIE_SECURE = _https
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=_https)
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=_https):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000 if _https else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=_https)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=_https)
# Paths (regexes, no leading slash) still served over plain HTTP, e.g. a health check.
SECURE_REDIRECT_EXEMPT = env.list("DJANGO_SECURE_REDIRECT_EXEMPT", default=[])
# Even with DEBUG on, the error page hides settings that carry credentials in a URL.
DEFAULT_EXCEPTION_REPORTER_FILTER = "interledger_site.reporting.SettingsFilter"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "axes",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "payments",
    "receivers",
    "receivers.open_payments",
    "links",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login refused by django-axes into the 429 (AXES_LOCKOUT_CALLABLE).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "interledger_site.urls"
ASGI_APPLICATION = "interledger_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers proceed while the ledger writer commits; a busy timeout instead
    # of "database is locked" when the Celery eager path and the switch write at once.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
    # A file, not :memory:, for the test database: the ledger writer thread and the test's
    # own thread share tables, which an in-memory database refuses ("table is locked").
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
ATOMIC_REQUESTS = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, channels, cache, celery -----------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 5000, "expiry": 30},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # One process without Redis: its own memory is the shared cache django-axes wants.
    SILENCED_SYSTEM_CHECKS = ["axes.W001"]
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every database connection before and after each task unless
# this is set (a new Postgres backend per task: ~26% of the worker's time under load). Set:
# the worker keeps its connection; payments.tasks drops one that is broken or older than
# CONN_MAX_AGE after each task instead, as Django does per request.
CELERY_DB_REUSE_MAX = 1_000_000
# Recovery: every serving process (Daphne) applies unapplied receipts, queues due webhook
# deliveries and resumes stuck outgoing payments at start-up and every this many seconds,
# in both modes (payments.recovery); no beat is needed.
PAYMENTS_RECOVERY_INTERVAL_S = env.float("PAYMENTS_RECOVERY_INTERVAL_S", default=5.0)
# The same sweeps as Celery tasks, for a deployment that also runs beat (optional).
CELERY_BEAT_SCHEDULE = {
    "apply-pending-receipts": {"task": "payments.apply_pending_receipts", "schedule": 60.0},
    "retry-webhooks": {"task": "payments.retry_webhooks", "schedule": 60.0},
    "resume-outgoing-payments": {"task": "payments.resume_outgoing_payments", "schedule": 60.0},
    # The serving process prunes these too (links.tasks); beat only adds a sweep.
    "prune-http-async-requests": {"task": "links.prune_http_async_requests", "schedule": 600.0},
}

# --- The node's identity ------------------------------------------------------------------
ILP_ADDRESS = env.str("ILP_ADDRESS", default="test.local")
ILP_ASSET_CODE = env.str("ILP_ASSET_CODE", default="USD")
ILP_ASSET_SCALE = env.int("ILP_ASSET_SCALE", default=9)
ILP_RECEIVER_SECRET = env.str("ILP_RECEIVER_SECRET", default=_local_secrets["ILP_RECEIVER_SECRET"])
# Connector knobs (connector.md): a fee in parts per million and expiry margins in ms.
ILP_FEE_PPM = env.int("ILP_FEE_PPM", default=0)
ILP_MIN_MESSAGE_WINDOW_MS = env.int("ILP_MIN_MESSAGE_WINDOW_MS", default=1000)
ILP_MAX_HOLD_TIME_MS = env.int("ILP_MAX_HOLD_TIME_MS", default=30000)
# A serving process's cyclic-GC thresholds once it has started (e.g. "10000,10,10";
# interledger_site.runtime.tune_gc_for_serving); unset keeps Python's (700, 10, 10).
ILP_GC_THRESHOLDS = [int(n) for n in env.list("ILP_GC_THRESHOLDS", default=[])]
# How long committed receipts gather before one apply (the receivers' postings, incoming
# payments, webhooks; payments.ledger.applier): a batch's fixed cost, one Celery task and
# its round trips, is paid per batch. What reads money received reads receipts, exact from
# their COMMIT; incoming-payment rows, the receivers' postings and webhooks wait this long.
ILP_RECEIPT_APPLY_DELAY_S = env.float("ILP_RECEIPT_APPLY_DELAY_S", default=0.5)
# Batches the ledger's writer keeps in flight on PostgreSQL (payments.ledger.book.writer_lanes):
# one thread and one connection each; SQLite always has one.
ILP_LEDGER_WRITER_LANES = env.int("ILP_LEDGER_WRITER_LANES", default=2)
ILP_ROUTE_BROADCAST_INTERVAL_S = env.float("ILP_ROUTE_BROADCAST_INTERVAL_S", default=30.0)
ILP_PAID_API_PRICE = env.int("ILP_PAID_API_PRICE", default=100)
ILP_PUBLIC_URL = _PUBLIC_URL
# Outgoing HTTP to URLs users and peers give (webhooks, HTTP-OER callbacks, SPSP queries) may
# reach private, loopback and link-local addresses only when this is on (development, tests).
ILP_ALLOW_PRIVATE_URLS = env.bool("ILP_ALLOW_PRIVATE_URLS", default=DEBUG)
# Pointer names no user may take, besides the site's own (receivers.names.SITE_NAMES).
ILP_RESERVED_NAMES = env.list("ILP_RESERVED_NAMES", default=[])

# --- Auth, i18n, static -----------------------------------------------------------------------
# Django's four validators (forms and ``changepassword``; ``setup_demo`` sets its demo/demo
# password directly, without validation).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed logins (the login page, the admin's, the API token endpoint: every authenticate()
# call with a request) are counted by django-axes in the cache (Redis with REDIS_URL, so all
# processes share them): after ILP_LOGIN_FAILURE_LIMIT failures from one client address or
# for one username, logins from it / to it get 429 for ILP_LOGIN_COOLOFF_MINUTES. Behind a
# proxy, run Daphne with --proxy-headers so the client address is the real one.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_FAILURE_LIMIT = env.int("ILP_LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("ILP_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "interledger_site.throttles.login_lockout_response"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/me/"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "interledger_site.api.exception_handler",
    # Throttles keep their counts in the cache (shared through Redis). The client address is
    # REMOTE_ADDR, never a client-sent X-Forwarded-For (see --proxy-headers above).
    "NUM_PROXIES": 0,
}
# The API token endpoint's throttles (interledger_site.throttles): per client address and per
# username asked for.
ILP_TOKEN_RATE_PER_ADDRESS = env.str("ILP_TOKEN_RATE_PER_ADDRESS", default="10/min")
ILP_TOKEN_RATE_PER_USERNAME = env.str("ILP_TOKEN_RATE_PER_USERNAME", default="20/hour")
SPECTACULAR_SETTINGS = {
    "TITLE": "Interledger site API",
    "DESCRIPTION": "Payment pointers, incoming and outgoing payments, peers and paid APIs.",
    "VERSION": "1",
    # Swagger UI served from our own static files: no CDN needed (or reachable) to read the docs.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
        # Lock-outs are warnings; every failed login at INFO would be noise.
        "axes": {"level": "WARNING"},
    },
}
