"""The operator console: who is online now, rooms, and a live dashboard, in the Django admin.

``site.install`` adds the pages' URLs to the host's admin site (``presence.apps`` does it for
``django.contrib.admin``'s default ``admin.site``) and links them from the admin index;
``queries`` reads, ``actions`` writes, ``charts`` draws the dashboard's SVG charts, ``views``
only parse, call and render.
"""
