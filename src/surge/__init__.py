"""surge: the serving layer between AI applications and their models."""

__version__ = "0.1.0"
