"""featurestream: the command line and the glue between stream/ (online) and sinks/ (offline)."""

__version__ = "0.1.0"
