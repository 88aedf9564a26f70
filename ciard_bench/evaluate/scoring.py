"""The counting every evaluation shares: predicted labels, per-point verdicts as a string,
an accuracy entry with its 95 % Wilson interval."""
from __future__ import annotations

import math
from typing import Any

import torch


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of ``k`` successes in ``n``, in percent."""
    if n == 0:
        return [0.0, 100.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)]


def encode_mask(mask: torch.Tensor) -> str:
    """Bool tensor -> ``"0110..."`` (one character per example, ``1`` = correct)."""
    return "".join("1" if v else "0" for v in mask.tolist())


def decode_mask(text: str) -> torch.Tensor:
    """Inverse of :func:`encode_mask`."""
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: Any) -> torch.Tensor:
    """Predicted labels (CPU) of ``x``, ``batch_size`` at a time."""
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def entry(ok: torch.Tensor, clean_acc: float | None = None) -> dict:
    """Accuracy (percent) of the 0/1 verdicts ``ok`` with its interval, counts, W-R against
    ``clean_acc`` when given, and the verdicts themselves."""
    k, n = int(ok.sum()), len(ok)
    acc = 100.0 * k / n if n else 0.0
    out = {"accuracy": acc, "ci95": wilson(k, n), "n": n, "n_correct": k}
    if clean_acc is not None:
        out["wr"] = (clean_acc + acc) / 2
    out["correct"] = encode_mask(ok)
    return out
