from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The admin index gets a link to the operator dashboard: its own template extends
        # Django's "admin/index.html" (no project-wide admin override needed).
        from django.contrib import admin

        admin.site.index_template = "dashboard/admin_index.html"
