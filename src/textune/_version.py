"""The package version, alone, so that low layers (the run directory) need not import the package face."""

__version__ = "0.1.0"
