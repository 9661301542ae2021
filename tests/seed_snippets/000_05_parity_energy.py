# ruff: noqa
# Seed 000, "4. Gate Activation Visualizations", B. Parity Energy Trajectories: verbatim;
# the seed imports nothing here, so the test's namespace holds the function and the data.

plot_parity_energy_trajectory(parity_energies, gate_activations, k_star=0.721, regime_sequence=regimes)
