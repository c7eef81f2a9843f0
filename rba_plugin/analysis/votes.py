"""Votes at a pixel: which queries vote for which class, and how strongly.

At pixel (y, x) query q gives class k the vote v[q, k] = sigmoid(mask_q)(y, x) * softmax(class_q)[k]
(k over the C known classes, "no object" dropped); Mask2Former's class score is L_k(y, x) =
sum_q v[q, k] (RbA paper Eq. 2, Sec. 3.2). Coordinates are in the model's output, i.e. the image
as read (before the test-time resize), row y and column x from 0.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.meta_arch.mask_former import MaskFormer
from ..utils.tables import markdown_table
from .query_outputs import QueryRunner, class_scores, mask_probabilities

__all__ = ["parse_pixel", "check_pixels", "find_record", "PixelVotes", "run_pixel_votes"]

_PIXEL = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*$")
# Query masks are brought to the output size in chunks of this many queries (100 full-size
# 1024 x 2048 masks would take 800 MB).
_CHUNK = 16


def parse_pixel(text: str) -> Tuple[int, int]:
    """"y,x" -> (y, x).

    Raises:
        ValueError: naming ``text`` when it is not two integers separated by a comma.
    """
    match = _PIXEL.match(str(text))
    if not match:
        raise ValueError(f"pixel {text!r}: expected 'y,x' (row, column; two integers)")
    return int(match.group(1)), int(match.group(2))


def check_pixels(pixels: Sequence[Tuple[int, int]], height: int, width: int, image: str = "the image") -> None:
    """Raises ValueError naming the first pixel outside ``height`` x ``width``."""
    if not pixels:
        raise ValueError("no pixel given: pass at least one 'y,x'")
    for y, x in pixels:
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(
                f"pixel (y={y}, x={x}) is outside {image} ({height} rows x {width} columns: y in [0, {height - 1}], "
                f"x in [0, {width - 1}])"
            )


def find_record(records: Sequence[Dict], image: str) -> Tuple[int, Dict]:
    """(index, record) of ``image``: an index into ``records`` ("3"), or a file name matched as
    the full path, the base name or the base name without extension.

    Raises:
        ValueError: an index out of range, or no / several records with that name (named).
    """
    text = str(image).strip()
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if not 0 <= index < len(records):
            raise ValueError(
                f"image index {index} is outside the dataset's {len(records)} images (0 .. {len(records) - 1})"
            )
        return index, records[index]

    def names(record: Dict) -> Tuple[str, str, str]:
        base = os.path.basename(record["file_name"])
        return record["file_name"], base, os.path.splitext(base)[0]

    matches = [i for i, r in enumerate(records) if text in names(r)]
    if len(matches) != 1:
        examples = ", ".join(os.path.basename(r["file_name"]) for r in records[:3])
        what = "no image" if not matches else f"{len(matches)} images"
        raise ValueError(f"{what} named {text!r} in the dataset (its files are named like {examples}); "
                         "pass an index or a unique file name")
    return matches[0], records[matches[0]]


@dataclass
class PixelVotes:
    """Votes at the listed pixels of one image.

    Attributes:
        pixels: P (y, x).
        votes: P x Q x C, v[q, k] at each pixel.
        mask_probability: P x Q, sigmoid(mask_q) at each pixel.
        class_probability: Q x (C+1), softmax(class_q) (the last column: "no object").
        class_scores: P x C, the model's L at each pixel (= votes summed over queries, to float rounding).
        class_names: C names.
        image: the image's file name.
        output_size: (height, width).
    """

    pixels: List[Tuple[int, int]]
    votes: np.ndarray
    mask_probability: np.ndarray
    class_probability: np.ndarray
    class_scores: np.ndarray
    class_names: List[str]
    image: str
    output_size: Tuple[int, int]

    def to_json(self) -> Dict:
        entries = []
        for p, (y, x) in enumerate(self.pixels):
            votes = self.votes[p]
            voting = np.argsort(-votes.sum(1), kind="stable")
            entries.append({
                "y": y,
                "x": x,
                "class_scores": dict(zip(self.class_names, map(float, self.class_scores[p]))),
                "predicted_class": self.class_names[int(self.class_scores[p].argmax())],
                "mask_probability": [float(v) for v in self.mask_probability[p]],
                "votes": votes.tolist(),
                "queries_by_total_vote": [int(q) for q in voting],
            })
        return {
            "image": self.image,
            "height": self.output_size[0],
            "width": self.output_size[1],
            "class_names": list(self.class_names),
            "class_probability": self.class_probability.tolist(),
            "vote_definition": "votes[q][k] = sigmoid(mask_q)(y, x) * softmax(class_q)[k]; "
                               "class_scores[k] = sum_q votes[q][k]",
            "pixels": entries,
        }

    def to_markdown(self, top_queries: int = 5) -> str:
        parts = [f"Votes at pixels of {self.image} ({self.output_size[0]} x {self.output_size[1]}); "
                 "vote = sigmoid(mask) x softmax(class)"]
        for p, (y, x) in enumerate(self.pixels):
            votes = self.votes[p]
            top_classes = np.argsort(-self.class_scores[p], kind="stable")[:3]
            scores = ", ".join(f"{self.class_names[k]} {self.class_scores[p, k]:.3f}" for k in top_classes)
            rows = []
            for q in np.argsort(-votes.sum(1), kind="stable")[:top_queries]:
                k = int(votes[q].argmax())
                rows.append([int(q), float(self.mask_probability[p, q]), self.class_names[k],
                             float(self.class_probability[q, k]), float(votes[q, k]), float(votes[q].sum())])
            header = ["query", "sigmoid(mask)", "its top class", "softmax(class)", "vote for it", "total vote"]
            parts.append(f"### (y={y}, x={x})\n\nlargest class scores L: {scores}\n\n"
                         + markdown_table(header, rows, digits=3))
        return "\n\n".join(parts)


@torch.no_grad()
def run_pixel_votes(
    model: MaskFormer, batched_input: Dict, pixels: Sequence[Tuple[int, int]], class_names: Sequence[str]
) -> PixelVotes:
    """Per-query votes of ``model`` at ``pixels`` of one test input.

    Raises:
        ValueError: a pixel outside the image (named, with the image's size).
    """
    height = int(batched_input.get("height", batched_input["image"].shape[-2]))
    width = int(batched_input.get("width", batched_input["image"].shape[-1]))
    image = str(batched_input.get("file_name", "the image"))
    check_pixels(pixels, height, width, image)  # before the model runs
    prediction = QueryRunner(model, batched_input).predict()
    ys = torch.tensor([y for y, _ in pixels])
    xs = torch.tensor([x for _, x in pixels])
    chunks = []
    for start in range(0, len(prediction.queries), _CHUNK):
        rows = list(range(start, min(start + _CHUNK, len(prediction.queries))))
        chunks.append(mask_probabilities(model, prediction, rows)[:, ys, xs].T)  # P x rows
    masks = torch.cat(chunks, dim=1).float().cpu()  # P x Q
    probs = F.softmax(prediction.class_logits.float(), dim=-1).cpu()  # Q x (C+1)
    votes = masks[:, :, None] * probs[None, :, :-1]
    scores = class_scores(model, prediction)[:, ys, xs].T.float().cpu()
    return PixelVotes([(int(y), int(x)) for y, x in pixels], votes.numpy(), masks.numpy(), probs.numpy(),
                      scores.numpy(), list(class_names), image, (height, width))
