"""Which web pages may open a chat WebSocket."""

from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.conf import settings


def WidgetOriginValidator(application):
    """Allow this site's own hosts, plus the sites configured to embed the widget.

    The widget runs on the company's own website, whose origin is usually not one of the chat
    server's ALLOWED_HOSTS, so those origins are listed in CHATBOT_WIDGET_ORIGINS.
    """
    if not settings.CHATBOT_WIDGET_ORIGINS:
        return AllowedHostsOriginValidator(application)
    allowed = AllowedHostsOriginValidator(application).allowed_origins
    return OriginValidator(application, [*allowed, *settings.CHATBOT_WIDGET_ORIGINS])
