# ruff: noqa
# Seed 000, "3. Hydra Configuration Management", Usage: verbatim. Not Python as written: it
# sketches train_hydra.main (@hydra.main over configs/config.yaml) and mixes in two shell lines;
# the test checks that it does not compile and that both command lines compose.

import hydra
from omegaconf import DictConfig

@hydra.main(config_path="configs", config_name="config")
def main(cfg: DictConfig):
    # Access config
    model = instantiate(cfg.model)
    trainer = instantiate(cfg.trainer)
    ...

# Run with different configs
python train_hydra.py model=z2_delta trainer=fast
python train_hydra.py model.hidden_dim=128 data.generator.T=5000
