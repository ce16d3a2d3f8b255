"""pytest configuration: this folder is on sys.path (prepend import mode), so tests import `helpers`."""

import os

import torch

# Two cores: more threads only add contention. Tests are deterministic under fixed seeds.
torch.set_num_threads(min(2, os.cpu_count() or 1))
