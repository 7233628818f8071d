"""SLURM: job scripts, submission, sweeps and the pre-submission plan."""
