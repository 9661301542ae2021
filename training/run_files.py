"""Names of the files a run leaves in its directory, shared by the writer (train_hydra.py) and the
readers (visualization/sweep_summary.py)."""

JOB_ERROR_FILE = "job_error.json"  # what a failed sweep job leaves in its dir (written by train_hydra.main)
