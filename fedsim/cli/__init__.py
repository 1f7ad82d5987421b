"""The command line (main.py) and what it drives: the local launcher, the pre-flight
check, experiment sweeps and the unlearning driver. The top layer: nothing imports it."""
