"""Carry parts for the offline GPU machine: a file split into parts joins back to the same bytes."""

from __future__ import annotations

import os

from train.pack_for_device import split_file


def test_split_parts_join_back_to_the_same_bytes(tmp_path):
    src = tmp_path / "model.safetensors"
    data = os.urandom(100_003)
    src.write_bytes(data)
    parts = split_file(src, [tmp_path / "m1a", tmp_path / "m1b"], 40_000)
    assert [p.name for p in parts] == ["part.aa", "part.ab"]
    assert parts[0].parent.name == "m1a" and parts[1].parent.name == "m1b"
    assert len(parts[0].read_bytes()) == 40_000  # each part under the carry limit; the last takes the rest
    assert b"".join(p.read_bytes() for p in sorted(parts)) == data
