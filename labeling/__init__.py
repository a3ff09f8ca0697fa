"""Crowd labelling backend: the SQLite store, the annotation queue, aggregation, agreement, import/export."""

from .aggregate import ClipLabel, aggregate_labels
from .agreement import agreement_report
from .errors import NotFoundError, StoreError
from .store import Store

__all__ = ["ClipLabel", "NotFoundError", "Store", "StoreError", "aggregate_labels", "agreement_report"]
