"""The training losses, one class in one file each (hard.py, kd.py, ...), registered by name in
registry.py: what `--loss` accepts, what a study sweeps for a loss (its knobs) and what `report`
says of it all come from the class. A researcher's own loss needs no fork: a subclass of
`base.WeakLoss` named on the command line as `--loss package.module:Name`, or registered by a
Python entry point in the group `w2s_pipe.losses` (`pyproject.toml`: `[project.entry-points.
"w2s_pipe.losses"] mine = "package.module:Name"`).

Nothing here imports torch at import time (`w2s-pipe --help` reads the classes); the tensor math
(functional.py) is imported when a loss first computes.
"""
