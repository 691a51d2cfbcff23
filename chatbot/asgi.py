"""ASGI entry point: Django for HTTP, the chat consumer for WebSockets (served by daphne)."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatbot.routing import websocket_urlpatterns  # noqa: E402
from chatbot.runtime import get_runtime  # noqa: E402
from chatbot.security import WidgetOriginValidator  # noqa: E402
from chatbot.selectors import embed_candidates_ahead  # noqa: E402

# A serving process loads its models now, in the background, not on the first customer's time.
get_runtime().warm_up()
if settings.CHATBOT_EMBED_REVIEW_AHEAD:
    embed_candidates_ahead()  # then the admin's first visit to "Candidate new intents" is quick

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": WidgetOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
