"""Federated unlearning: local objectives (objectives.py), the unlearning report
(report.py) and the ``fedsim unlearn`` driver (driver.py). The server side of the
protocols lives in strategies/unlearning.py and strategies/federaser.py."""
