"""`migration-planner replay`: the sample of real requests through every candidate."""

from __future__ import annotations
