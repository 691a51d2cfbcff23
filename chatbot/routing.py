from django.urls import path

from chatbot.consumers import ChatConsumer, StaffConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/staff/", StaffConsumer.as_asgi()),
]
