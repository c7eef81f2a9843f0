"""Keeps per-frame score maps and labels for the second (component) pass.

Component metrics need the pixel threshold, which is known only once every frame has been seen, so
frames are cached: in memory up to a byte limit, then as .npy files in a private temporary
directory that is removed by :meth:`close` (or when the cache is garbage-collected).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

__all__ = ["ScoreMapCache"]


class ScoreMapCache:
    """Append-only store of (H x W score, H x W uint8 label) pairs; scores keep their dtype
    (float32 for the exact protocol, float16 for the SMIYC one)."""

    def __init__(self, memory_limit_bytes: int = 2 << 30, tmp_root: Optional[str] = None):
        self.memory_limit_bytes = int(memory_limit_bytes)
        self._tmp_root = tmp_root
        self._frames: List[Union[Tuple[np.ndarray, np.ndarray], str]] = []
        self._memory_bytes = 0
        self._tmp_dir: Optional[str] = None
        self._finalizer = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def spilled_frames(self) -> int:
        return sum(isinstance(f, str) for f in self._frames)

    def _spill_dir(self) -> str:
        if self._tmp_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="rba_ood_scores_", dir=self._tmp_root)
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp_dir, True)
        return self._tmp_dir

    def add(self, score: np.ndarray, label: np.ndarray) -> None:
        score = np.ascontiguousarray(score)
        label8 = np.ascontiguousarray(label, dtype=np.uint8)
        size = score.nbytes + label8.nbytes
        if self._memory_bytes + size <= self.memory_limit_bytes:
            self._frames.append((score, label8))
            self._memory_bytes += size
            return
        path = os.path.join(self._spill_dir(), f"{len(self._frames):07d}.npz")
        np.savez(path, score=score, label=label8)
        self._frames.append(path)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for frame in self._frames:
            if isinstance(frame, str):
                with np.load(frame) as data:
                    yield data["score"], data["label"]
            else:
                yield frame

    def close(self) -> None:
        """Drops every frame and removes the temporary directory."""
        self._frames = []
        self._memory_bytes = 0
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._tmp_dir = None
