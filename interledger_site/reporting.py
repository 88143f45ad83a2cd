"""What Django's error reports (the DEBUG 500 page, error e-mails) may show of the settings."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SettingsFilter(SafeExceptionReporterFilter):
    """Django's filter, also hiding settings that hold a URL, a cache location or a host list.

    ``DATABASE_URL``, ``REDIS_URL`` and ``CELERY_BROKER_URL`` carry passwords inside the URL,
    and ``CACHES``/``CHANNEL_LAYERS`` repeat the Redis URL under ``LOCATION``/``hosts``; the
    stock pattern matches none of these names.
    """

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|LOCATION|HOSTS|BROKER|DSN",
        flags=re.IGNORECASE,
    )
