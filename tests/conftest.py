"""pytest configuration: this folder is on sys.path (prepend import mode), so tests import `helpers`."""

import torch

# One thread: the tests use tiny models, where a second OpenMP thread mostly adds synchronisation,
# and on a loaded machine spinning threads slow every op tenfold (measured: 183 s vs 22 s for the
# suite). Tests are deterministic under fixed seeds either way.
torch.set_num_threads(1)
