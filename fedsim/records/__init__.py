"""What travels and what a run keeps: wire views of Flower records (wire.py), the
per-round log (round_log.py), the run folder and its plots (run_folder.py, plots.py),
recorded observations (observations.py) and the ledger (ledger.py)."""
