"""ltrec: transferable sequential recommenders for long-tailed users (Yin et al., KDD 2020)."""

__version__ = "0.1.0"
