"""One module per command; each has a frozen config dataclass and one entry function."""
