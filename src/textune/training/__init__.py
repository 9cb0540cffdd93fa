"""The training loop and what it needs: precision, optimizer and schedule, checkpoints."""
