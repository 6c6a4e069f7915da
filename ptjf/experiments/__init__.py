"""Experiments: sweeps over methods × sampling rates × learning rates, and their analysis.

Each submodule has one job; `pareto` holds the pure arithmetic of trade-off fronts (paper §2).
"""

from ptjf.experiments.pareto import dominates, front_curve, pareto_front, pareto_front_records

__all__ = ["dominates", "front_curve", "pareto_front", "pareto_front_records"]
