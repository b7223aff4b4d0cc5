"""Subcommands of the ``deepretrieval`` CLI (see :mod:`deepretrieval_trainer.cli`)."""
