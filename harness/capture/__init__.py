"""Captured sessions: the recording proxy, importers of captures, conversion to traces, --update."""
