# ruff: noqa
# Seed 000, "4. Gate Activation Visualizations", C. Statistical Analysis: verbatim; as B.

plot_gate_statistics(
    gate_activations,
    transition_mask,
    # Automatically computes Welch's t-test
    # Shows violin plots and histograms
)
