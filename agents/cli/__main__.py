"""`python -m agents.cli` runs the `loopbus` command line."""

from agents.cli import main

main(prog_name="loopbus")
