"""The `mailflow` command line."""
