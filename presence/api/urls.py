"""HTTP routes of the presence API."""

from django.urls import path

from presence.api import status, views

app_name = "presence"
urlpatterns = [
    path("online/", views.online, name="online"),
    path("users/<int:user_id>/", views.user_detail, name="user"),
    path("token/", views.token, name="token"),
    path("status/", status.status, name="status"),
]
