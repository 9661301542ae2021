# Seed 000: every `python train_hydra.py ...` command line of its usage sections, verbatim, in the
# seed's order ("3. Hydra Configuration Management", "Quick Start" 2, "Recommended Workflow"
# phases 1-3). tests/test_seed_snippets.py composes each (every combination of a -m sweep).

# Run with different configs
python train_hydra.py model=z2_delta trainer=fast
python train_hydra.py model.hidden_dim=128 data.generator.T=5000

# Test multiple configurations
python train_hydra.py -m \
    model=z2_seam,z2_delta,lstm \
    model.hidden_dim=32,64,128 \
    data.generator.p_switch=0.01,0.05,0.1

# Default configuration
python train_hydra.py

# Fast experiment (10% data, 10 epochs)
python train_hydra.py trainer=fast

# High-performance Gated Delta model
python train_hydra.py model=z2_delta trainer.precision=16-mixed

# Hyperparameter sweep
python train_hydra.py -m model.hidden_dim=32,64,128

# Use fast trainer for quick iterations
python train_hydra.py trainer=fast model.hidden_dim=32

# Sweep over configurations
python train_hydra.py -m \
    model=z2_seam,z2_delta \
    model.hidden_dim=32,64,128 \
    model.temperature=0.01,0.05,0.1

# Train best configuration with full precision
python train_hydra.py \
    model=z2_delta \
    model.hidden_dim=64 \
    trainer.max_epochs=50 \
    trainer.precision=16-mixed
