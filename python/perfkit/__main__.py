"""``python -m perfkit``: the ``perfkit`` command."""

from perfkit.cli import main

main()
