"""The ``assay`` command line: :mod:`apps.cli.main` builds the Typer app from one module per command group."""
