"""The ``streaminfer`` command: one subcommand per job."""
