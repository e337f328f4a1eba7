"""featurestream: the command line, the glue between stream/ (online) and sinks/ (offline), and the
Python online client (``from featurestream import OnlineClient``)."""

from .client import (
    FeatureClientError,
    FeatureConnectionError,
    FeatureRequestError,
    FeatureServerError,
    FeatureTimeout,
    OnlineClient,
    OnlineVector,
)

__version__ = "0.1.0"

__all__ = [
    "FeatureClientError",
    "FeatureConnectionError",
    "FeatureRequestError",
    "FeatureServerError",
    "FeatureTimeout",
    "OnlineClient",
    "OnlineVector",
    "__version__",
]
