from django.apps import AppConfig


class LinksConfig(AppConfig):
    name = "links"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The port payments sends through (payments never imports links): wiring only.
        from links.sender_link import open_sender
        from payments.sending.port import wire_sender_opener

        wire_sender_opener(open_sender)
