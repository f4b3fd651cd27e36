"""Sizing a cluster: exact parameter counts, per-device memory, pipeline bubble and communication per layout."""
from sa_megatron.planning.layouts import GIB, RESERVED_FRACTION, Cluster, Layout, Plan, plan_layouts
from sa_megatron.planning.parameters import ModelParameters, count_model_parameters

__all__ = ["GIB", "RESERVED_FRACTION", "Cluster", "Layout", "Plan", "plan_layouts", "ModelParameters",
           "count_model_parameters"]
