"""Root URLs."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from presence.api.views import favicon

urlpatterns = [
    path("", TemplateView.as_view(template_name="demo.html"), name="demo"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/presence/", include("presence.api.urls")),
    # /metrics (access-controlled in production), /healthz, /readyz: presence/ops/urls.py.
    path("", include("presence.ops.urls")),
]
