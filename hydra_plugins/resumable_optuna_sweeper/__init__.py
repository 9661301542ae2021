"""Hydra plugins of this project (Hydra loads plugins only from the hydra_plugins namespace)."""
