"""Who may connect and what they may see: authentication, room authorization, the Origin check.

They read the request or the socket's scope and the settings; they never touch Redis.
"""
