"""featurestream: the command line, the glue between stream/ (online) and sinks/ (offline), and the
Python online client (``from featurestream import OnlineClient``) and batch ingestion (``featurestream.ingest``)."""

from .client import (
    FeatureClientError,
    FeatureConnectionError,
    FeatureRequestError,
    FeatureServerError,
    FeatureTimeout,
    OnlineClient,
    OnlineVector,
)
from .ingest import IngestResult, ingest

__version__ = "0.1.0"

__all__ = [
    "FeatureClientError",
    "FeatureConnectionError",
    "FeatureRequestError",
    "FeatureServerError",
    "FeatureTimeout",
    "IngestResult",
    "OnlineClient",
    "OnlineVector",
    "__version__",
    "ingest",
]
