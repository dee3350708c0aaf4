"""panda-edge: Video-Panda from a PyTorch checkpoint to an edge device.

Each module logs to `logging.getLogger(__name__)`, under the `panda_edge` logger; only the `panda`
command line puts a handler on it (stderr, `-v` / `-q`), so a program that imports panda_edge
decides itself what to show.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
