"""Short-lived copies of clip media handed to annotators, in a folder private to this process.

The app never serves the media folder itself (its path is blocked); each response gets a copy under a
random name. Copies, not hard links: a link shares the stored file's bytes, which then outlive the
clip's deletion. The folder comes from mkdtemp (mode 0700, a fresh name, ours), not a fixed shared path
that another local user could create first. When a clip's media goes (deletion, consent withdrawn), its
copies go too, here and wherever the web framework copied them (caches passed as `mirrors`, searched
for the copy's unique name one folder down); the rest expire after `ttl_s`.

`prepare` settles once per clip which file is copied: the media itself, or a browser-playable conversion
kept in the private folder until the clip goes. Clips are content-addressed, so the answer never changes,
and the web framework need not probe every response again (an ffprobe subprocess per served clip).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)


class ServedCopies:
    """Copies of clip media per clip id; thread-safe."""

    def __init__(
        self,
        ttl_s: float,
        remember_s: float,
        mirrors: Callable[[], Iterable[Path]] = tuple,
        prefix: str = "emo-serve-",
        prepare: Callable[[Path, Path], Path] | None = None,
    ):
        """ttl_s: our copy's life; remember_s: how long a copy's name is kept to purge the mirrors' copies of it
        (at least the framework's cache lifetime); prepare(media, folder): the file to serve for a clip's media,
        the media itself or a conversion written under folder (called once per clip)."""
        self.ttl_s = ttl_s
        self.remember_s = max(remember_s, ttl_s)
        self.mirrors = mirrors
        self.prepare = prepare
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self._lock = threading.Lock()
        self._preparing: dict[str, threading.Lock] = {}  # per clip: one conversion at a time, never two writers
        self._copies: dict[str, list[tuple[Path, float]]] = {}
        self._sources: dict[str, Path] = {}  # clip id -> the file its copies are made from (prepare's answer)

    def copy(self, clip_id: str, media_path: Path) -> Path:
        """A fresh private copy of the clip's (prepared) media, the suffix kept so that players know the format."""
        self.expire()
        source = self.source(clip_id, media_path)
        target = self.folder / f"{uuid.uuid4().hex}{source.suffix}"
        shutil.copyfile(source, target)
        with self._lock:
            self._copies.setdefault(clip_id, []).append((target, time.time()))
        return target

    def owns(self, path: str | Path) -> bool:
        """Whether path is one of our copies (a file directly in the private folder)."""
        return Path(path).parent == self.folder

    def source(self, clip_id: str, media_path: Path) -> Path:
        """The file a clip's copies are made from: prepare(media_path) on the clip's first serve, then remembered."""
        with self._lock:
            known = self._sources.get(clip_id)
        if known is not None and known.exists():
            return known
        if self.prepare is None:
            return media_path
        with self._lock:
            clip_lock = self._preparing.setdefault(clip_id, threading.Lock())
        with clip_lock:  # other clips are prepared meanwhile
            with self._lock:
                known = self._sources.get(clip_id)
            if known is None or not known.exists():
                known = self.prepare(media_path, self.folder / "ready")
                with self._lock:
                    self._sources[clip_id] = known
                    self._preparing.pop(clip_id, None)
        return known

    def expire(self) -> int:
        """Delete our copies older than ttl_s (the framework has long cached them by then); forget names older
        than remember_s. Returns how many records were forgotten."""
        now = time.time()
        with self._lock:
            stale = [p for copies in self._copies.values() for p, made in copies if made < now - self.ttl_s]
            before = sum(map(len, self._copies.values()))
            for clip_id in list(self._copies):
                kept = [(p, made) for p, made in self._copies[clip_id] if made >= now - self.remember_s]
                if kept:
                    self._copies[clip_id] = kept
                else:
                    del self._copies[clip_id]
            forgotten = before - sum(map(len, self._copies.values()))
        for path in stale:
            path.unlink(missing_ok=True)
        return forgotten

    def purge(self, clip_ids: Iterable[str]) -> int:
        """Remove every copy of these clips, ours and the mirrors'; return how many files went."""
        clip_ids = list(clip_ids)
        with self._lock:
            paths = [p for clip_id in clip_ids for p, _ in self._copies.pop(clip_id, [])]
            sources = [self._sources.pop(clip_id, None) for clip_id in clip_ids]
        removed = self._remove_conversions(s for s in sources if s is not None)
        for path in paths:
            for copy in [path, *(m for root in self.mirrors() for m in Path(root).glob(f"*/{path.name}"))]:
                with contextlib.suppress(FileNotFoundError):
                    copy.unlink()
                    removed += 1
        if removed:
            log.info("purged %d served copies of deleted media", removed)
        return removed

    def _remove_conversions(self, sources: Iterable[Path]) -> int:
        """Delete prepared files that are ours (conversions under the folder), not the stored media itself."""
        removed = 0
        for source in sources:
            if self.folder in source.parents:
                with contextlib.suppress(FileNotFoundError):
                    source.unlink()
                    removed += 1
        return removed

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
