"""Studies of several runs: the paper's ablations, the EM variants and Table 4 trained for
one budget (ablations), and their curves side by side (curves)."""
