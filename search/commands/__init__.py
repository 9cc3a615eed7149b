"""One module per `swipr` command: its `add_parser(...)` and what the command runs.
search/cli.py imports a command's module only when that command is on the command line."""
