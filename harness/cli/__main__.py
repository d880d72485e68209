"""`python -m harness.cli`: the `mailflow` command."""

from harness.cli.app import main

main()
