"""Server half of federated unlearning: the protocol wrapper and holder selection
(protocol.py), FedEraser's calibrated replay (federaser.py) and the ledger wrapper
that records who trained (ledger.py). Client half: fedsim/unlearning/."""
