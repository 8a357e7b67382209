"""Top-k accuracy for classification."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS

__all__ = ['Accuracy']


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent, reported as ``accuracy/top1``, ``accuracy/top5``, ...

    Reads ``pred_score`` and ``gt_label`` of each predicted data sample (``ImageClassifier`` in predict mode).
    ``k`` larger than the number of classes counts every sample as correct.
    """

    default_prefix = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, 5), **kwargs):
        super().__init__(**kwargs)
        self.topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f'topk must be positive integers, got {topk}')

    def process(self, data_batch: Any, data_samples: Sequence[Dict[str, Any]]) -> None:
        for sample in data_samples:
            self.results.append((sample['pred_score'].float().cpu(), int(sample['gt_label'])))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        scores = torch.stack([score for score, _ in results])
        labels = torch.tensor([label for _, label in results])
        k_max = min(max(self.topk), scores.shape[1])
        hits = scores.topk(k_max, dim=1).indices == labels[:, None]
        return {f'top{k}': 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in self.topk}
