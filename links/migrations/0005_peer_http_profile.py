from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("links", "0004_http_async_lease"),
    ]

    operations = [
        migrations.AddField(
            model_name="peer",
            name="http_profile",
            field=models.CharField(
                choices=[
                    ("interledger", "ilp-plugin-http (ILP-Peer-Name, ILP-Destination)"),
                    ("rafiki", "RFC 35 only (Rafiki): raw OER, Bearer token, no ILP-Peer-Name"),
                ],
                default="interledger",
                help_text="Headers of our HTTP-OER requests to it (rafiki: RFC 35's, nothing more).",
                max_length=16,
            ),
        ),
    ]
