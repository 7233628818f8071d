"""The training application: engine set-up, the loop, checkpoints, metrics; `genlip-train`."""
