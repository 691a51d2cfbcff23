"""Health probes answered before anything checks the Host header."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from chatbot import views

PROBES = {"/healthz": views.healthz, "/readyz": views.readyz}


class ProbesMiddleware:
    """Answer /healthz and /readyz whatever Host they were sent to.

    Container health checks and load balancers probe a process by its address (127.0.0.1,
    a pod IP), which is not in DJANGO_ALLOWED_HOSTS once an operator sets the site's real name:
    Django would answer 400 (DisallowedHost) and the process would never count as healthy. The
    probes read nothing from the request, so they need no host check.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)
