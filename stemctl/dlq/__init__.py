"""``stemctl dlq``: the dead-letter queue — its pure rules and its Pub/Sub edge."""
