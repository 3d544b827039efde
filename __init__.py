"""w2s-pipe: weak-to-strong generalization for vision, as a two-stage offline pipeline."""

__version__ = "0.1.0"
