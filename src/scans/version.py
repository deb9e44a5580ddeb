"""The package version (a module of its own, so that modules importing it need not import
``scans`` itself while it is being imported)."""

__version__ = "0.1.0"
