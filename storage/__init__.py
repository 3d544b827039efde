"""The pseudo-label store: schema (defined once in schema.py), writer, reader. Knows nothing of torch."""

from .reader import LabelStore, existing_store, open_store
from .schema import SCHEMA_VERSION

__all__ = ["LabelStore", "existing_store", "open_store", "SCHEMA_VERSION"]
