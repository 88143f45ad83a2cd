"""Open Payments on our pointers (receiver side): wallet addresses, a narrow GNAP
authorization server for incoming-payment grants, RFC 9421 signature checks and the
incoming-payments resource server. See ``docs/OPEN_PAYMENTS.md``."""
