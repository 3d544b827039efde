"""Reusable parts the stages compose: data sources, transforms, models, loaders, distributed helpers."""
