"""Federated unlearning, client half: the local objectives (msgm.py, erasediff.py,
salun.py, gradient_ascent.py; shared parts in common.py; SalUn's mask in mask.py), their
dispatch on a client (local.py), and the unlearning report (report.py; generated samples
scored in generated.py, membership inference in membership.py). The server half
lives in strategies/unlearning/ (protocol.py, federaser.py); the ``fedsim unlearn``
driver in fedsim/cli/unlearn.py."""
