"""The ``advprompts`` command line (typer)."""
