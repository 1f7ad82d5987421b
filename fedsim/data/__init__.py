"""Datasets (datasets.py, local readers in local.py), partitions (partition.py), each
client's data in a run (clients.py) and ``fedsim split-data`` (split.py)."""
