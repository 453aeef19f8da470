"""``python -m bridge`` runs the CLI (the same as the ``salesbridge`` command)."""

from bridge.cli import main

main()
