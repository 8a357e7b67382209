#!/usr/bin/env python
"""Benchmark visionssm (and any timm) models: params, GFLOPs, images/s, peak memory. See visionssm/benchmark.py."""
import sys

from visionssm.benchmark import main

if __name__ == '__main__':
    results = main()
    sys.exit(0 if all(r['status'] == 'ok' for r in results) else 1)
