"""Which web pages may open a chat WebSocket."""

import logging
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

logger = logging.getLogger(__name__)

# Origins refused so far: each is logged once per process, not at every reconnect of its widgets.
_refused: set[str] = set()
_REFUSED_REMEMBERED = 1000


def header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return ""


def origin_allowed(origin: str, host: str) -> bool:
    """Whether a page at `origin` may open a chat on a server reached as `host` (its Host
    header): a page of this very site (same scheme-less host and port, the host one of
    ALLOWED_HOSTS), or one of CHATBOT_WIDGET_ORIGINS ("*": any page).

    Channels' AllowedHostsOriginValidator matches a bare host on any port or scheme, so any
    other app or plain-http page on the chat server's hostname could open chats; this does not.
    """
    if "*" in settings.CHATBOT_WIDGET_ORIGINS:
        return True
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # no Origin, "null" (a sandboxed page or a file), or garbage
    if f"{parts.scheme}://{parts.netloc}" in {
        o.strip().lower().rstrip("/") for o in settings.CHATBOT_WIDGET_ORIGINS
    }:
        return True
    return same_site(origin, host)


def same_site(origin: str, host: str) -> bool:
    """Whether a page at `origin` belongs to this very site: the same host and port as the
    server was reached by (`host`, its Host header), that host one of ALLOWED_HOSTS. What the
    support team's live admin pages must be, whatever CHATBOT_WIDGET_ORIGINS allows."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    domain, _port = split_domain_port(host.lower())
    return (
        bool(domain)
        and parts.netloc == host.lower()
        and validate_host(domain, settings.ALLOWED_HOSTS)
    )


class WidgetOriginValidator:
    """Let through the WebSocket handshakes of allowed pages (`origin_allowed`); refuse the
    others with a 403 before the application sees them."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("WidgetOriginValidator guards WebSocket connections only.")
        origin, host = header(scope, b"origin"), header(scope, b"host")
        if origin_allowed(origin, host):
            return await self.application(scope, receive, send)
        _log_refused(origin, host)
        return await WebsocketDenier()(scope, receive, send)


def _log_refused(origin: str, host: str) -> None:
    """An operator who embeds the widget on a site they forgot to list sees a chat that stays
    "Offline" (a browser does not tell a page why its WebSocket failed): the log says."""
    if origin in _refused or len(_refused) >= _REFUSED_REMEMBERED:
        return
    _refused.add(origin)
    logger.warning(
        "Refused a chat WebSocket from the page origin %r (server reached as %r): to let that "
        "site embed the widget, add the origin to CHATBOT_WIDGET_ORIGINS.",
        origin or "(none)",
        host,
    )
