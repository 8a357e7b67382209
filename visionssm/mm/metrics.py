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
        # the batch at once, where its scores are: one transfer of its top-k hits, not two per sample
        if not data_samples:
            return
        scores = torch.stack([sample['pred_score'] for sample in data_samples]).float()
        labels = torch.stack([torch.as_tensor(sample['gt_label']).reshape(()) for sample in data_samples])
        k_max = min(max(self.topk), scores.shape[1])
        hits = scores.topk(k_max, dim=1).indices == labels.to(scores.device)[:, None]
        self.results.extend(hits.cpu().unbind(0))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        hits = torch.stack(results)
        return {f'top{k}': 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in self.topk}
