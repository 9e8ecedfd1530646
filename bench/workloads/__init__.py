"""One module per broker, each defining ``IMPLEMENTATIONS``: name → workload class."""
