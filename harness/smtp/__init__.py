"""SMTP as the harness speaks it: the reply grammar, command syntax, masking of volatile values."""
