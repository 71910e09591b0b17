"""The operator console: who is online now, rooms, and a live dashboard, in the Django admin.

``site.PresenceAdminSite`` (installed through ``apps.PresenceAdminConfig``) adds the pages'
URLs and links them from the admin index; ``queries`` reads, ``actions`` writes, ``charts``
draws the dashboard's SVG charts, ``views`` only parse, call and render.
"""
