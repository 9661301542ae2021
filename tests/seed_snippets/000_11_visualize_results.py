# ruff: noqa
# Seed 000, "Quick Start", 3. Visualize Results: verbatim; results/diagnostics.pt is what
# python visualization/gate_heatmaps.py --experiment RUN --output results writes (the test does that first).

from visualization.gate_heatmaps import plot_gate_heatmap

# Load saved diagnostics
diagnostics = torch.load("results/diagnostics.pt")

# Plot
plot_gate_heatmap(diagnostics["gate_activation"], regime_sequence=diagnostics["regimes"], save_path="gate_heatmap.png")
