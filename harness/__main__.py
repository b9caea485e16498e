"""``python -m harness``: the ``harness`` command (what a Ray Job runs on a cluster's head)."""

from harness.cli import main

main()
