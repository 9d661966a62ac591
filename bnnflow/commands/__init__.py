"""The CLI layer: one module per subcommand (its parser and its command function).

Each module imports only argparse and bnnflow.cli_args at module level, so `bnnflow --help`
stays instant; the work is imported inside the command function.
"""
