"""Root URLs: the presence app's (presence.urls, the admin) and this repository's demo pages."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import TemplateView

from presence.api.views import favicon

urlpatterns = [
    path("", TemplateView.as_view(template_name="presence/demo.html"), name="demo"),
    path("favicon.ico", favicon, name="favicon"),
    # The console's pages come with the admin's URLs (presence/console/site.py).
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="presence/login.html"),
        name="login",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    # The HTTP API, the token endpoint, /metrics, /healthz, /readyz: presence/urls.py.
    path("", include("presence.urls")),
]
