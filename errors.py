"""The one exception type a user sees: the CLI prints its message on one line and exits non-zero."""


class W2SError(Exception):
    """A problem the user can act on: bad input, missing data, an inconsistent store.

    The message names the file, shard, key or option at fault and, where possible, what would be
    valid. It must fit on one line. `option` carries the option it is about as data, so that the
    command line can say where a bad value came from (a recipe) without reading the wording.
    """

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(" ".join(str(message).split()))
        self.option = option  # the command-line option the error is about, where there is one (--lr)
