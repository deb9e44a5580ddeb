"""``python -m scans.cli``: the ``scans`` command."""

from . import run

run()
