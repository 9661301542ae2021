# ruff: noqa
# Seed 000, "4. Gate Activation Visualizations", A. Gate Activation Heatmaps: verbatim;
# gate_activations, regimes and mask are the test's (an untrained z2_seam model's diagnostics on antipodal data).

from visualization.gate_heatmaps import plot_gate_heatmap

plot_gate_heatmap(
    gate_activations,  # (batch, seq_len)
    regime_sequence=regimes,
    transition_mask=mask,
    time_range=(0, 500),
    save_path="gates.png",
)
