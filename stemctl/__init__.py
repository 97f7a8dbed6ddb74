"""``stemctl``: the operator CLI (provisioning, submit, results, the DLQ, models, the demo)."""
