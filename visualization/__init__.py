"""Figures of gate behaviour and of training runs, and the callbacks that draw them while training.

    visualization.gate_plots     plot_gate_heatmap, plot_parity_energy_trajectory, plot_gate_statistics
    visualization.gate_hooks     GateActivationHook (per-step diagnostics of any loop's forward calls)
    visualization.gate_slices    a run's validation slice: collect_slice_diagnostics, draw_slice_figures
    visualization.gate_heatmaps  the post-hoc script (and the seeds' import path for the names above)
    visualization.callbacks      GateHeatmapCallback (`callbacks=heatmap`)
    visualization.plot_runs      training curves and sweep comparisons from TensorBoard events
    visualization.sweep_summary  the summary table Hydra writes at the end of every sweep

Nothing is imported here: Hydra loads sweep_summary at the end of every sweep, and should not pay
for matplotlib, seaborn and scipy when no figure is drawn.
"""
