"""One exception type per boundary; messages are written for the person who sent the input."""


class MediaError(ValueError):
    """Input media (audio, video, image, text) that cannot be used; the message says what to do."""


class ModelError(RuntimeError):
    """A model or backbone that cannot be loaded or converted; the message says what to do."""
