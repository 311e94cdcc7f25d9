"""Topology and route planning: distribution trees, fan-out by capacity, bypass order, manual routes."""

from relaysync.routing.manual import manual_plan
from relaysync.routing.planner import LEVELS, Hop, Plan, plan_tree
from relaysync.routing.topology import Node

__all__ = ["LEVELS", "Hop", "Node", "Plan", "manual_plan", "plan_tree"]
