"""What `--mode=` runs: train, evaluate, export, pseudo-labels, preview."""
