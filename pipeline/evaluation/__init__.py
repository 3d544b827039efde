"""Evaluation: top-1/top-5 of a model on a data set's shards, and the few-shot protocol."""
