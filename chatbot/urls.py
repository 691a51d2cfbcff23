from django.contrib import admin
from django.urls import path

from chatbot import views

admin.site.site_header = "Chatbot administration"
admin.site.site_title = "Chatbot admin"

urlpatterns = [
    path("", views.demo, name="demo"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    # Browsers ask every page's host for one: "No Content", not a 404 warning in the log each time.
    path("favicon.ico", views.no_favicon),
]
