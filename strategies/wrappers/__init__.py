"""Wrappers around any strategy: the StrategyWrapper base (base.py), byte metering
(metered.py) and recording of observations for attacks (recording.py)."""
