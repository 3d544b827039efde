"""Models: timm models by name or alias and their weights (build), the paper's CIFAR networks, the checkpoints this tool writes."""
