"""Imported by the loaders' fork server alone, before its first fork (workers.py): what every
loading process needs, imported once, with the server kept single-threaded. numpy's OpenBLAS and
pyarrow's jemalloc each start a thread when they load unless told not to; a loading process
computes nothing that wants them, and a process that is forked from must run no other thread."""

import os

# Set in the fork server only, before the libraries read them; each worker then takes the
# stage's own environment (workers.WorkerStart), after these have done their work.
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["JE_ARROW_MALLOC_CONF"] = "background_thread:false"

# What a loading process imports at its first sample, imported here once rather than once per
# worker at every loader's start (1.5 s a loader on digits, measured in bench/loader_start.py before
# these were added): the libraries the loading modules import where they are used, then those modules.
import PIL.Image  # noqa: E402,F401
import timm.data  # noqa: E402,F401
import torch  # noqa: E402,F401
import torchvision.io  # noqa: E402,F401
import torchvision.ops  # noqa: E402,F401
import torchvision.transforms  # noqa: E402,F401
import torchvision.transforms.v2.functional  # noqa: E402,F401
import webdataset  # noqa: E402,F401

from ..image import crops, decode, preprocess  # noqa: E402,F401
from ..views import erasing, mixing, params, pixels  # noqa: E402,F401
from . import join, shard_batches, train_stream  # noqa: E402,F401
