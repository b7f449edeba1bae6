"""The ``process-comms`` command line: :mod:`.main` builds the parser and runs one module per command."""
