"""Running traces: the replay client, the runner, outcomes of a run, stopping on signals."""
