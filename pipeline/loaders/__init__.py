"""Loading: the processes that read shards (workers), the labelling and evaluation loader (shard_batches), the training stream (train_stream) and its join with a store."""
