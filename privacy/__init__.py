"""Pure privacy algorithms (no Lightning): attacks, anonymisers and leakage metrics."""
