"""trustworthy-dl: Byzantine-robust and privacy-preserving distributed training."""

__version__ = "0.1.0"
