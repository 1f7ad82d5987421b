"""Networks (networks.py), the diffusion schedule and sampling (diffusion.py), local
training (train.py) and the per-process workspace that holds them (workspace.py)."""
