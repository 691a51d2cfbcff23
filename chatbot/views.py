import ipaddress

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


def _probe_response(request: HttpRequest, body: dict, ok: bool) -> JsonResponse:
    """The probe's findings for the machine's own network; only the verdict for the world.

    The findings name versions and quote errors (a Redis host name, an exception's text): a
    container health check, a load balancer or an operator's curl on the host sees them, but a
    request that came through the site's proxy (which adds X-Forwarded-For) or from a public
    address gets the status code and `{"status": ...}` alone.
    """
    status = 200 if ok else 503
    if not _on_own_network(request):
        return JsonResponse({"status": "ok" if ok else "unavailable"}, status=status)
    return JsonResponse(body, status=status)


def _on_own_network(request: HttpRequest) -> bool:
    if "HTTP_X_FORWARDED_FOR" in request.META:
        return False
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return peer.is_loopback or peer.is_private


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers: the database answers, an answer index is published, and
    Redis answers where there is one."""
    body = _alive()
    return _probe_response(request, body, _healthy(body))


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
    return _probe_response(request, body, _healthy(body) and state == "ready")
