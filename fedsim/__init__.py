"""fedsim: federated training of generative models on Flower + Ray.

Subpackages follow the data flow, lowest layer first (tests/test_layering.py
keeps imports pointing down):

- ``config``, ``rng``: the run's configuration and its random generators;
- ``compression``: update codecs (pure numpy), used by both sides;
- ``records``: what travels and what a run keeps (wire views, round log,
  run folder, observations, ledger);
- ``data``: datasets, partitions, each client's data;
- ``models``: networks, the diffusion schedule, local training;
- ``evaluation``: the server's evaluation, the evaluator classifier;
- ``unlearning``: the clients' unlearning objectives and the report;
- ``app``: the Flower ServerApp and ClientApp (above ``strategies/``);
- ``cli``: the command line, launcher, pre-flight and sweeps (the top).
"""

__version__ = "0.1.0"
