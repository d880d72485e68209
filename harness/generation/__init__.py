"""Generated traces: the generator and the oracle that predicts their outcomes."""
