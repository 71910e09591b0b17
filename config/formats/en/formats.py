"""Date formats of the English locale, overridden: operators read times to the second.

Django's English formats show "Nov. 25, 2026, 4:30 p.m."; the admin (list columns, read-only
fields) shows ISO-like times with seconds instead. Selected by ``FORMAT_MODULE_PATH``.
"""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
