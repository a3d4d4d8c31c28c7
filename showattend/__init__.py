"""showattend: "Show, Attend and Tell" (Xu et al., ICML 2015) in PyTorch, on one shared attention core."""
__version__ = "0.1.0"
