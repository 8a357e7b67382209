"""The Python-facing scan op and the route patterns of the families."""
from visionssm.kernels.routes import (
    Route, RoutePlan, bidirectional_routes, cross_routes, grouped_routes, lattice_routes, multiscale_routes,
    plan_routes, snake_routes,
)
from .selective_scan import BACKENDS, count_scan_flops, selective_scan

__all__ = [
    'selective_scan', 'BACKENDS', 'count_scan_flops', 'Route', 'RoutePlan', 'plan_routes',
    'cross_routes', 'bidirectional_routes', 'lattice_routes', 'grouped_routes', 'multiscale_routes',
    'snake_routes',
]
