"""The corpus: the trace model and its script, the conformance catalogue, the trace writer, message files."""
