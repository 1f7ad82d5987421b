"""What an honest-but-curious server sees under Flower's secure aggregation (SecAgg+).

With SecAgg+ (flwr's ``secaggplus_mod`` on the clients, ``SecAggPlusWorkflow`` on the
server) the server never sees one client's reply, only the round's aggregate. Each client
scales its arrays by its weight ratio r_k = round(n_k / max_weight x Q) / Q, quantizes them
stochastically into [0, Q) after clipping to [-c, c] (Flower's ``quantize``), adds pairwise
and private masks, and sends the result; the server sums, removes the masks (they cancel by
construction, so they are left out here: the server learns exactly this sum), dequantizes the
sum (Flower's ``dequantize``), adds the offset -(K - 1) c and divides by sum_k r_k: the
weighted mean of the clients' arrays, with quantization noise of step 2c / Q per client.
This module reproduces that arithmetic with Flower's own quantization functions (the
workflow's last step, not its key exchange). Flower rounds with NumPy's global generator; it is
seeded from the run's derived generator and restored, as in attacks/defenses.py.
"""

from __future__ import annotations

import numpy as np
from flwr.common.secure_aggregation.quantization import dequantize, quantize

CLIPPING_RANGE = 8.0  # SecAggPlusWorkflow's defaults
QUANTIZATION_RANGE = 2**22
MAX_WEIGHT = 1000.0


def secure_aggregate(replies: list[list[np.ndarray]], num_examples: list[int], *, seed: int,
                     clipping_range: float = CLIPPING_RANGE, quantization_range: int = QUANTIZATION_RANGE,
                     max_weight: float = MAX_WEIGHT) -> list[np.ndarray]:
    """The arrays the server holds after SecAgg+ over ``replies`` (one list of arrays per client)."""
    if len(replies) < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        total, q_ratio_sum = None, 0
        for arrays, n in zip(replies, num_examples):
            q_ratio = round(min(n / max_weight, 1.0) * quantization_range)  # the mod's factor, as an integer
            scaled = [a.astype(np.float64) * (q_ratio / quantization_range) for a in arrays]
            quantized = [q.astype(np.int64) for q in quantize(scaled, clipping_range, quantization_range)]
            total = quantized if total is None else [t + q for t, q in zip(total, quantized)]
            q_ratio_sum += q_ratio
    finally:
        np.random.set_state(state)
    out = dequantize(total, clipping_range, quantization_range)
    offset = -(len(replies) - 1) * clipping_range
    return [(v + offset) * (quantization_range / q_ratio_sum) for v in out]
