from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from chatbot import selectors
from chatbot.runtime import get_runtime


def demo(request: HttpRequest) -> HttpResponse:
    """A page of the demo shop that embeds the chat widget with one script tag."""
    return render(request, "chatbot/demo.html")


def no_favicon(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=204)


def _alive() -> dict:
    connection.ensure_connection()
    body = {"database": "ok", "index": selectors.live_index_version()}
    if settings.REDIS_URL:
        body["channel_layer"] = redis_state()
    return body


def redis_state() -> str:
    """Whether Redis answers: without it no WebSocket opens (the channel layer) and no task
    reaches the worker."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        return f"unreachable: {error}"
    finally:
        client.close()
    return "ok"


def _healthy(body: dict) -> bool:
    return bool(body["index"]) and body.get("channel_layer", "ok") == "ok"


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers: the database answers, an answer index is published, and
    Redis answers where there is one."""
    body = _alive()
    return JsonResponse(body, status=200 if _healthy(body) else 503)


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: healthy, and this process has loaded its models (a serving process starts
    warming them up when it starts; until then its first customers would wait for it). Once
    ready, it names the model version it answers with and the precision it serves it in."""
    runtime = get_runtime()
    state, why = runtime.readiness()
    body = {**_alive(), "model": state}
    if why:
        body["error"] = why
    body |= runtime.serving()
    # Healthy and loading: expected at every start, not an error to log (`WarmingUpIsNoError`).
    request.warming_up = _healthy(body) and state == "warming_up"
    return JsonResponse(body, status=200 if _healthy(body) and state == "ready" else 503)
