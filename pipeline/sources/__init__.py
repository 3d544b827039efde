"""Data sets on disk: WebDataset shards and their manifests, the data set registry, noisy labels, and the archives `prepare` reads."""
