"""Face detection and FER2013-like crops, on composites of real FER2013 faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from backend.errors import MediaError
from backend.face import FER_MEAN, FER_STD, crop_faces, detect_faces, face_cascade, normalize_face, to_gray

FER_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "fer2013_val.npz"
# FER2013 val images the Haar cascade finds when upscaled (checked by hand; it misses about half).
DETECTABLE = [1, 2, 5, 8, 9, 11]
PASTE_SIDE = 180
POSITIONS = [(20, 20), (230, 20), (440, 20), (20, 260), (230, 260), (440, 260)]  # (x, y) in a 640x480 frame


@pytest.fixture(scope="module")
def fer_images() -> np.ndarray:
    return np.load(FER_VAL)["images"]


@pytest.fixture(scope="module")
def group_photo(fer_images) -> np.ndarray:
    """640x480 RGB frame with six upscaled FER2013 faces pasted on a grey background."""
    frame = np.full((480, 640), 150, dtype=np.uint8)
    for index, (x, y) in zip(DETECTABLE, POSITIONS):
        face = cv2.resize(fer_images[index], (PASTE_SIDE, PASTE_SIDE), interpolation=cv2.INTER_CUBIC)
        frame[y : y + PASTE_SIDE, x : x + PASTE_SIDE] = face
    return np.stack([frame] * 3, axis=-1)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def _pasted(scale: float = 1.0) -> list[tuple[int, int, int, int]]:
    side = round(PASTE_SIDE * scale)
    return [(round(x * scale), round(y * scale), side, side) for x, y in POSITIONS]


def test_cascade_loads_once():
    assert face_cascade() is face_cascade()
    assert not face_cascade().empty()


def test_detects_real_faces_in_a_group_photo(group_photo):
    boxes = detect_faces(group_photo)
    assert len(boxes) >= 3  # Haar misses some 48x48-derived faces; most of these six are found
    for box in boxes:  # every box sits on a pasted face, none on the background
        assert max(_iou(box, p) for p in _pasted()) > 0.5, box
    areas = [w * h for _, _, w, h in boxes]
    assert areas == sorted(areas, reverse=True)
    assert detect_faces(group_photo, max_faces=1) == boxes[:1]


def test_grayscale_and_rgba_inputs_give_the_same_boxes(group_photo):
    boxes = detect_faces(group_photo)
    gray = group_photo[:, :, 0]
    rgba = np.concatenate([group_photo, np.full((*gray.shape, 1), 255, np.uint8)], axis=-1)
    assert detect_faces(gray) == boxes
    assert detect_faces(gray[:, :, None]) == boxes
    assert detect_faces(rgba) == boxes
    assert detect_faces(group_photo.astype(np.float32) / 255.0) == boxes


def test_no_faces_in_blank_or_noise_images():
    rng = np.random.default_rng(0)
    assert detect_faces(np.zeros((480, 640, 3), np.uint8)) == []
    assert detect_faces(np.full((480, 640, 3), 255, np.uint8)) == []
    assert detect_faces(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []


@pytest.mark.parametrize("shape", [(1, 1, 3), (0, 0, 3), (5, 4000, 3), (4000, 3), (30, 30)])
def test_degenerate_images_return_no_faces(shape):
    assert detect_faces(np.zeros(shape, np.uint8)) == []


def test_bad_shapes_raise_media_error():
    with pytest.raises(MediaError, match="expected an image"):
        detect_faces(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(MediaError, match="expected an image"):
        to_gray(np.zeros(100, np.uint8))


@pytest.mark.timeout(30)
def test_large_image_is_downscaled_and_boxes_mapped_back(group_photo):
    scale = 4000 / 640
    big = cv2.resize(group_photo, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    boxes = detect_faces(big)
    assert len(boxes) >= 3
    for box in boxes:
        assert max(_iou(box, p) for p in _pasted(scale)) > 0.5, box


def test_small_upload_of_one_face_is_upscaled_and_found(fer_images):
    boxes = detect_faces(fer_images[1])  # a bare 48x48 FER2013 face
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert x >= 0 and y >= 0 and x + w <= 48 and y + h <= 48 and w >= 30


def test_crops_have_fer_shape_range_and_framing(fer_images):
    """A detected, cropped, upscaled FER face should look like the original FER image (/255)."""
    correlations = []
    for index in range(40):
        upscaled = cv2.resize(fer_images[index], (192, 192), interpolation=cv2.INTER_CUBIC)
        boxes = detect_faces(upscaled)
        if not boxes:  # Haar misses about half of FER2013; framing is judged on the ones it finds
            continue
        crops = crop_faces(upscaled, boxes[:1])
        assert crops.shape == (1, 48, 48) and crops.dtype == np.float32
        assert crops.min() >= 0.0 and crops.max() <= 1.0
        reference = fer_images[index].astype(np.float32) / 255.0
        correlations.append(np.corrcoef(crops[0].ravel(), reference.ravel())[0, 1])
    assert len(correlations) >= 8
    assert np.median(correlations) > 0.85, correlations


def test_crops_at_the_border_and_empty_lists(group_photo):
    assert crop_faces(group_photo, []).shape == (0, 48, 48)
    crops = crop_faces(group_photo, [(0, 0, 100, 100), (600, 440, 40, 40), (700, 700, 10, 10)], size=64)
    assert crops.shape == (3, 64, 64) and np.isfinite(crops).all()
    assert crops.min() >= 0.0 and crops.max() <= 1.0
    assert np.allclose(crops[2], FER_MEAN)  # a box outside the image gives a flat grey crop


def test_normalize_face_matches_fer_statistics(fer_images):
    dark = (fer_images[2].astype(np.float32) * 0.3).astype(np.uint8)  # an under-exposed webcam face
    normalized = normalize_face(dark)
    assert abs(normalized.mean() - FER_MEAN) < 0.03 and abs(normalized.std() - FER_STD) < 0.03
    assert np.allclose(normalize_face(np.full((48, 48), 7, np.uint8)), FER_MEAN)
