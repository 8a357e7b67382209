#!/usr/bin/env python
"""Benchmark visionssm and timm models: params, GFLOPs, throughput, latency, peak memory; merge partial results.

See visionssm/benchmark.py (protocol) and benchmarks/README.md (the published runs). Exit status 1 when a measurement
did not succeed (out of memory, error, skipped), 0 otherwise and for --merge.
"""
import sys

from visionssm.benchmark import main

if __name__ == '__main__':
    results = main()
    merged = '--merge' in sys.argv
    sys.exit(0 if merged or all(r['status'] == 'ok' for r in results) else 1)
