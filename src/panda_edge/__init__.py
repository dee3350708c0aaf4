"""panda-edge: Video-Panda from a PyTorch checkpoint to an edge device."""

__version__ = "0.1.0"
