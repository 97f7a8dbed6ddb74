"""``stemctl worker`` with a stand-in for the model — everything else is the real worker.

``python -m tests.reliability.standin_worker`` reads the same settings from the
environment and runs the same runner, handler, GCS adapter, publishers, decoding,
spooling and encoding as ``stemctl worker``; only the separation is
``tests.support.fakes.CountingSeparator`` (each stem is the mix divided by six). It exists so the
CI-sized soak can push 200 jobs through a worker process in well under a minute on two
cores; the long mode runs the same soak on ``stemctl worker`` with the real Demucs model.
"""

from __future__ import annotations

import logging
import sys

from consumer.app import build_worker
from consumer.logs import configure_logging
from consumer.settings import Settings
from tests.support.fakes import CountingSeparator


def main() -> int:
    configure_logging(logging.INFO)
    worker = build_worker(Settings(), CountingSeparator())
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
