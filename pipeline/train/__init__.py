"""Training parts: losses, optimizer and schedule, checkpoints, runs and their resumption."""
