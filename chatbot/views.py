from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from chatbot import selectors
from chatbot.runtime import get_runtime


def demo(request: HttpRequest) -> HttpResponse:
    """A page of the demo shop that embeds the chat widget with one script tag."""
    return render(request, "chatbot/demo.html")


def _alive() -> dict:
    connection.ensure_connection()
    return {"database": "ok", "index": selectors.live_index_version()}


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers: the database answers and an answer index is published."""
    body = _alive()
    return JsonResponse(body, status=200 if body["index"] else 503)


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: healthy, and this process has loaded its models (a serving process starts
    warming them up when it starts; until then its first customers would wait for it). Once
    ready, it names the model version it answers with and the precision it serves it in."""
    runtime = get_runtime()
    ready = runtime.ready
    body = {**_alive(), "model": "ready" if ready else "warming_up"}
    if ready:
        body |= runtime.serving()
    # Healthy and loading: expected at every start, not an error to log (`WarmingUpIsNoError`).
    request.warming_up = bool(body["index"]) and not ready
    return JsonResponse(body, status=200 if body["index"] and ready else 503)
