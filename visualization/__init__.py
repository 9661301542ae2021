"""Figures of gate behaviour and of training runs, and the callbacks that draw them while training.

    visualization.gate_heatmaps  plot_gate_heatmap, plot_parity_energy_trajectory, plot_gate_statistics,
                                 gate_transition_statistics, GateActivationHook, the post-hoc script
    visualization.callbacks      GateHeatmapCallback (`callbacks=heatmap`)
    visualization.plot_runs      training curves and sweep comparisons from TensorBoard events
    visualization.sweep_summary  the summary table Hydra writes at the end of every sweep

Nothing is imported here: Hydra loads sweep_summary at the end of every sweep, and should not pay
for matplotlib, seaborn and scipy when no figure is drawn.
"""
