"""Client selection: the Selector interface, random and replay (selectors.py),
FedEMD (selectors.py, distances in emd.py) and the Shapley selector (shapley.py)."""
