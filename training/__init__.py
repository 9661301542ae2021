"""The training layer: what SeamGatedLightningModule (lightning_module.py) is assembled from.

    training.metrics        the per-stage metric collections of each task
    training.objectives     the training loss and evaluation metrics of each task
    training.decoding       greedy decoding and scheduled sampling (seq2seq)
    training.schedules      the learning-rate schedules
    training.optimizers     AdamW, fused where the device has the kernel (optim.fused)
    training.trainer        create_trainer, its device and precision rules and NoProfiler
    training.floating_point flushing denormal floats to zero while a trainer runs (trainer.flush_denormal)
    training.host_memory    glibc keeping freed memory for the next step (trainer.keep_freed_memory)
    training.run_checkpoint ModelCheckpoint that keeps the best score on resume into a new dir
    training.checkpoint_io  atomic (write-then-rename) file writes and Lightning's CheckpointIO
    training.run_files      names of the files a run leaves in its directory

Layer rule (tests/test_import_layers.py): this package imports models/ and data/, never
train_hydra.py or the scripts.
"""
