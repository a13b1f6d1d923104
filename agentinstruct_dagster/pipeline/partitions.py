"""Batches: one dynamic partition per inbox folder."""

from __future__ import annotations

import dagster as dg

BATCHES = "batches"
batches = dg.DynamicPartitionsDefinition(name=BATCHES)
