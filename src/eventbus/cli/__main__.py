"""``python -m eventbus.cli``: the same as the ``eventbus`` command."""

from eventbus.cli import main

main()
