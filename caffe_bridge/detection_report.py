"""Readable comparison of two DetectionOutput results (``caffe2torch verify`` uses it).

A DetectionOutput top is 1 x 1 x N x 7, one row per detection:
``[image, label, score, xmin, ymin, xmax, ymax]`` (normalised, unclipped). Rows are matched per
image and label, greedily by highest IoU, so two implementations that write the same detections
in different orders (OpenCV sorts by score, Caffe by label) still match row for row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def detections(blob: np.ndarray) -> np.ndarray:
    """The N x 7 rows of a DetectionOutput top without filler rows: Caffe's ``label == -1``
    rows (no detection in the batch) and OpenCV's all-zero rows (its output in that case)."""
    rows = np.asarray(blob, dtype=np.float64).reshape(-1, 7)
    return rows[(rows[:, 1] != -1) & np.any(rows != 0, axis=1)]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n x 4) with every box in b (m x 4), normalised coordinates."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / union, np.all(a[:, None] == b[None], -1) * 1.0)
    return out


@dataclass
class DetectionReport:
    """How two detection results agree."""

    n_ours: int
    n_ref: int
    matched: int
    worst_iou: float = 1.0           # lowest IoU among matched pairs
    worst_box_diff: float = 0.0      # largest coordinate difference among matched pairs
    worst_score_rel: float = 0.0     # largest |score difference| / |reference score|
    unmatched_ours: list[tuple[int, int, float]] = field(default_factory=list)
    unmatched_ref: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return self.matched == self.n_ours == self.n_ref

    def lines(self) -> list[str]:
        out = [f"detections: {self.n_ours} (ours) vs {self.n_ref} (reference), "
               f"{self.matched} matched by image, label and IoU"]
        if self.matched:
            out.append(f"matched boxes: worst IoU {self.worst_iou:.6f}, largest coordinate "
                       f"difference {self.worst_box_diff:.3g}, largest relative score "
                       f"difference {self.worst_score_rel:.3g}")
        for what, rows in (("only in ours", self.unmatched_ours),
                           ("only in the reference", self.unmatched_ref)):
            if rows:
                shown = ", ".join(f"image {i} label {c} score {s:.4g}" for i, c, s in rows[:5])
                more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
                out.append(f"{what}: {shown}{more}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def compare_detections(ours: np.ndarray, ref: np.ndarray, min_iou: float = 0.5
                       ) -> DetectionReport:
    """Match the rows of two DetectionOutput tops (per image and label, greedy by IoU)."""
    a, b = detections(ours), detections(ref)
    rep = DetectionReport(len(a), len(b), 0)
    used_a, used_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    for key in sorted({(r[0], r[1]) for r in a} | {(r[0], r[1]) for r in b}):
        ia = np.flatnonzero((a[:, 0] == key[0]) & (a[:, 1] == key[1]))
        ib = np.flatnonzero((b[:, 0] == key[0]) & (b[:, 1] == key[1]))
        if not len(ia) or not len(ib):
            continue
        m = iou(a[ia, 3:], b[ib, 3:])
        # prefer the pair with the closest score among equal IoUs (duplicates at one place)
        m = m - 1e-9 * np.abs(a[ia, 2][:, None] - b[ib, 2][None, :])
        while m.size and m.max() >= min_iou:
            i, j = np.unravel_index(np.argmax(m), m.shape)
            ra, rb = a[ia[i]], b[ib[j]]
            used_a[ia[i]] = used_b[ib[j]] = True
            rep.matched += 1
            rep.worst_iou = min(rep.worst_iou, float(iou(ra[None, 3:], rb[None, 3:])[0, 0]))
            rep.worst_box_diff = max(rep.worst_box_diff, float(np.abs(ra[3:] - rb[3:]).max()))
            rel = abs(ra[2] - rb[2]) / max(abs(rb[2]), 1e-30)
            rep.worst_score_rel = max(rep.worst_score_rel, float(rel))
            m[i, :] = -np.inf
            m[:, j] = -np.inf
    rep.unmatched_ours = [(int(r[0]), int(r[1]), float(r[2])) for r in a[~used_a]]
    rep.unmatched_ref = [(int(r[0]), int(r[1]), float(r[2])) for r in b[~used_b]]
    return rep
