"""Data generators and LightningDataModules."""
