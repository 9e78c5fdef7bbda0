"""``python -m ftplan``: the same as the ``ftplan`` command."""

from .cli import main

main()
