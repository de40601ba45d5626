"""``python -m unifer`` runs the command-line interface."""

from unifer.cli import main

main()
