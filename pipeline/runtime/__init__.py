"""The process a stage runs in: its device and precision, torchrun's ranks and collectives, the watchdog that ends a stuck or stopped rank, the workspace on disk."""
