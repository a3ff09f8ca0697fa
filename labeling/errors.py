"""The store's one exception boundary; messages are written for the person who will read them."""


class StoreError(Exception):
    """A request the labelling store cannot carry out; the message says what to do instead."""


class NotFoundError(StoreError):
    """A clip, annotator or vote that is not (or no longer) in the store."""
