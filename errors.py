"""The one exception type a user sees: the CLI prints its message on one line and exits non-zero."""


class W2SError(Exception):
    """A problem the user can act on: bad input, missing data, an inconsistent store.

    The message names the file, shard, key or option at fault and, where possible, what would be
    valid. It must fit on one line.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
