"""App configs the project overrides."""

from django.contrib.staticfiles.apps import StaticFilesConfig as BaseStaticFilesConfig


class StaticFilesConfig(BaseStaticFilesConfig):
    """``collectstatic`` leaves out the browser client's tests and npm metadata.

    They sit beside presence.js so `npm test` works in its folder, but a site has no reason to
    serve them.
    """

    ignore_patterns = [
        *BaseStaticFilesConfig.ignore_patterns,
        "presence/tests/*",
        "presence/package.json",
    ]
