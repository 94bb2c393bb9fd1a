"""`python -m vlmjobs ...` runs the `vlmjobs` command."""

from vlmjobs.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="vlmjobs")
