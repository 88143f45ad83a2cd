from django.apps import AppConfig


class ReceiversConfig(AppConfig):
    name = "receivers"
    verbose_name = "Payment pointers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from receivers import signals  # noqa: F401  (connects the directory invalidation)
