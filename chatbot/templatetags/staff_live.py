"""What the support team's admin pages show of the conversations waiting for a person when they
load; `static/admin_live/staff.js` keeps it current."""

from django import template

from chatbot import selectors
from chatbot.models import Conversation

register = template.Library()

# How many waiting conversations a page lists; the list of conversations, filtered, has them all.
WAITING_SHOWN = 20


@register.simple_tag
def conversations_waiting() -> list[Conversation]:
    return selectors.conversations_waiting(limit=WAITING_SHOWN)
