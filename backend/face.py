"""Face detection (OpenCV Haar cascade) and FER2013-like face crops for the face CNN.

The CNN trains on FER2013 (48x48 grayscale, pixel/255), so crops copy FER's framing and brightness:
OpenCV's box covers about 40 of FER's 48 pixels (measured on upscaled FER faces), hence a 10% margin
per side, and each crop's mean/std is set to FER's median per-image mean/std.
"""

from __future__ import annotations

import functools
import logging
import threading

import cv2
import numpy as np

from backend.errors import MediaError, ModelError

log = logging.getLogger(__name__)

CASCADE_FILE = "haarcascade_frontalface_default.xml"
FACE_SIZE = 48  # FER2013 side, pixels
MARGIN = 0.1  # extra box side on each side: a Haar box is ~40/48 of a FER2013 image
FER_MEAN = 0.512  # median per-image mean of FER2013 val images, pixel/255
FER_STD = 0.207  # median per-image standard deviation, pixel/255
DETECT_MAX_SIDE = 1024  # larger images are downscaled before detection (boxes mapped back)
DETECT_MIN_SIDE = 192  # smaller images are upscaled (a bare 48x48 face upload still works)
HAAR_WINDOW = 24  # the cascade's native window, pixels; nothing smaller can be found
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5

Box = tuple[int, int, int, int]  # x, y, w, h in the input image's pixels

_detect_lock = threading.Lock()  # CascadeClassifier is not documented as thread-safe


@functools.cache
def face_cascade() -> cv2.CascadeClassifier:
    """The frontal-face Haar cascade shipped in opencv-python-headless (<5), loaded once."""
    path = cv2.data.haarcascades + CASCADE_FILE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ModelError(
            f"could not load the face detector {path}; install opencv-python-headless<5 "
            "(5.x wheels ship no Haar cascades)"
        )
    return cascade


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grayscale uint8 (H, W) from RGB, RGBA, grayscale (H, W) / (H, W, 1), uint8 / uint16 / float [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise MediaError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(image.dtype, np.floating) else 1.0
        image = np.nan_to_num(image.astype(np.float32) * scale).clip(0, 255).round().astype(np.uint8)
    if image.ndim == 2 or image.size == 0:
        return np.ascontiguousarray(image if image.ndim == 2 else image[:, :, 0])
    code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(np.ascontiguousarray(image), code)


def _detection_scale(height: int, width: int) -> float:
    """Resize factor so the long side is at most DETECT_MAX_SIDE and the short side at least DETECT_MIN_SIDE."""
    down = DETECT_MAX_SIDE / max(height, width)
    up = DETECT_MIN_SIDE / min(height, width)
    return min(down, max(up, 1.0)) if down >= 1.0 else down


def detect_faces(rgb: np.ndarray, max_faces: int = 20, min_size: int = 24) -> list[Box]:
    """Face boxes (x, y, w, h) in the input's pixels, largest first, at most max_faces.

    min_size is in input pixels; after downscaling a large image, faces smaller than the cascade's
    24-pixel window at the detection scale cannot be found.
    """
    gray = to_gray(rgb)
    height, width = gray.shape
    if min(height, width) < 8 or max_faces <= 0:
        return []
    scale = _detection_scale(height, width)
    small = gray
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if min(small.shape) < HAAR_WINDOW:
        return []
    small = cv2.equalizeHist(small)  # dim webcam frames: the cascade needs contrast
    window = max(HAAR_WINDOW, round(min_size * scale))
    with _detect_lock:
        found = face_cascade().detectMultiScale(
            small, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(window, window)
        )
    boxes = [tuple(round(float(v) / scale) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    boxes = [_clip_box(box, width, height) for box in boxes]
    boxes = [b for b in boxes if b[2] > 0 and b[3] > 0]
    boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
    return boxes[:max_faces]


def _clip_box(box: tuple[int, ...], width: int, height: int) -> Box:
    x, y, w, h = box
    x, y = min(max(x, 0), width), min(max(y, 0), height)
    return x, y, min(w, width - x), min(h, height - y)


def normalize_face(gray: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] with FER2013's typical brightness and contrast (per-image mean/std matched).

    The face CNN may apply the same function to FER2013 images to train on exactly this distribution.
    """
    pixels = gray.astype(np.float32) / 255.0
    std = float(pixels.std())
    if std < 1e-3:  # a flat patch has no contrast to stretch
        return np.full_like(pixels, FER_MEAN)
    return ((pixels - pixels.mean()) / std * FER_STD + FER_MEAN).clip(0.0, 1.0)


def crop_faces(rgb: np.ndarray, boxes: list[Box], size: int = FACE_SIZE) -> np.ndarray:
    """(N, size, size) float32 in [0, 1]: square grayscale crops with FER2013 framing and brightness.

    Each crop is the box's larger side plus MARGIN per side, centred on the box; parts outside the
    image are filled by replicating the border.
    """
    gray = to_gray(rgb)
    height, width = gray.shape
    crops = np.zeros((len(boxes), size, size), dtype=np.float32)
    for i, (x, y, w, h) in enumerate(boxes):
        side = max(1, round(max(w, h) * (1 + 2 * MARGIN)))
        left = round(x + w / 2 - side / 2)
        top = round(y + h / 2 - side / 2)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + side, width), min(top + side, height)
        if x1 <= x0 or y1 <= y0:  # a box outside the image: nothing to show
            crops[i] = FER_MEAN
            continue
        patch = cv2.copyMakeBorder(
            gray[y0:y1, x0:x1], y0 - top, top + side - y1, x0 - left, left + side - x1, cv2.BORDER_REPLICATE
        )
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crops[i] = normalize_face(cv2.resize(patch, (size, size), interpolation=interpolation))
    return crops
