"""mailflow harness: lab, traces, replay, expectations, targets and reports."""
