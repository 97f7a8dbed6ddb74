"""The dev kit: local emulators, synthetic audio and tiny Demucs models.

For tests, the bench and ``stemctl demo``; not part of the worker runtime. Its third-party
needs (fake-gcs-server) come with the ``demo``/``dev`` extras.
"""
