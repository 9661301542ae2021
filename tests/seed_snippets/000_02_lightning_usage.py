# ruff: noqa
# Seed 000, "2. PyTorch Lightning Integration", Usage: verbatim; `datamodule` is the test's
# (a small antipodal DataModule). Without a GPU, create_trainer refuses accelerator='gpu' in one
# sentence; with one, it trains 50 epochs in 16-mixed, which use_amp=True checks.

from lightning_module import SeamGatedLightningModule, create_trainer

model = SeamGatedLightningModule(
    model_type="z2_delta",
    learning_rate=1e-3,
    use_amp=True,  # Enable mixed precision
)

trainer = create_trainer(
    max_epochs=50,
    accelerator="gpu",
    precision="16-mixed",  # FP16 training
)

trainer.fit(model, datamodule=datamodule)
