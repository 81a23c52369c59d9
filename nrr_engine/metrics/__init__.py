"""Measures: monthly ARR per account, rollups over hierarchies, and NRR/GRR movements."""
