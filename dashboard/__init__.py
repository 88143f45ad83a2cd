"""People's side of the node: the operators' dashboard (``/ops/``, live over ``ws/ops/``)
and the users' own pages next to ``/me/`` (webhooks, API token)."""
