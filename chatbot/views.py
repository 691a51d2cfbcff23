from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from chatbot import selectors
from chatbot.runtime import get_runtime


def demo(request: HttpRequest) -> HttpResponse:
    """A page of the demo shop that embeds the chat widget with one script tag."""
    return render(request, "chatbot/demo.html")


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers: the database answers and an answer index is published."""
    connection.ensure_connection()
    index_version = selectors.live_index_version()
    status = 200 if index_version else 503
    return JsonResponse({"database": "ok", "index": index_version}, status=status)


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: healthy, and this process has loaded its models (a serving process starts
    warming them up when it starts; until then its first customers would wait for it)."""
    connection.ensure_connection()
    index_version = selectors.live_index_version()
    model = "ready" if get_runtime().ready else "warming_up"
    status = 200 if index_version and model == "ready" else 503
    return JsonResponse({"database": "ok", "index": index_version, "model": model}, status=status)
