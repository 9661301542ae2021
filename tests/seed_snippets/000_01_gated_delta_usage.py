# ruff: noqa
# Seed 000, "1. Gated Delta Units", Usage: verbatim.
# Runs as written: output_dim defaults to input_dim (a next-observation model).

from models.gated_delta import Z2GatedDeltaRNN

model = Z2GatedDeltaRNN(
    input_dim=4,
    hidden_dim=64,
    delta_rank=8,  # Low-rank approximation
    use_parallel_scan=True,  # Enable parallel processing
)
