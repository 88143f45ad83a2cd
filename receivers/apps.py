from django.apps import AppConfig


class ReceiversConfig(AppConfig):
    name = "receivers"
    default_auto_field = "django.db.models.BigAutoField"
