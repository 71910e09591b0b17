"""Operator routes, included at the site root: metrics, health, the staff process listing."""

from django.urls import path

from presence.ops import views as opsviews

urlpatterns = [
    path("metrics", opsviews.metrics_view, name="metrics"),
    path("healthz", opsviews.healthz, name="healthz"),
    path("readyz", opsviews.readyz, name="readyz"),
    path("api/presence/processes/", opsviews.processes_view, name="presence-processes"),
]
