"""densattn: density-adaptive attention (DAAM) and its peers."""

__version__ = "0.1.0"
