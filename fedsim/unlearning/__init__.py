"""Federated unlearning: the local objectives (msgm.py, erasediff.py, salun.py,
gradient_ascent.py; shared parts in common.py) and their dispatch on a client (local.py),
the unlearning report (report.py) and the ``fedsim unlearn`` driver (driver.py). The
server side of the protocols lives in strategies/unlearning.py and strategies/federaser.py."""
