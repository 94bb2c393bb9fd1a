"""The `vlmjobs` command line: cli/app.py holds the group, one module per command family."""
