"""`python -m harness.cli`: the `mailflow` command."""

from harness.cli.entry import main

main()
