"""The app's HTTP routes, for a host's root URLconf: ``path("", include("presence.urls"))``.

The HTTP API and the token endpoint under ``api/presence/`` (namespace ``presence``), and the
operator endpoints at the root: ``/metrics`` (access-controlled in production), ``/healthz``,
``/readyz`` (docs/operations.md). The console's pages come with the host's ``admin.site.urls``
(presence/console/site.py).
"""

from django.urls import include, path

urlpatterns = [
    path("api/presence/", include("presence.api.urls")),
    path("", include("presence.ops.urls")),
]
