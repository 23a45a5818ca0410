"""The command-line programs, one module each with ``main(argv=None) -> int``.

``tools/NAME.py`` runs ``crbp_d2.cli.NAME.main``; setup.py installs the same programs as console
scripts (``crbp-NAME`` with dashes). Each module parses arguments and calls the library; the work
itself lives in the library modules.
"""
