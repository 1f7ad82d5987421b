"""Model stealing: the federation's global classifier, served behind a label-only prediction API,
copied data-free by an outsider (MEGA, Hong et al. 2022; ../shared/papers/later.md).

oracle.py: the target as the attacker sees it (a label per query, a query budget);
generator.py: the query generator; steal.py: MEGA's collaborative generator-substitute training
and the baselines on the same budget (a DFME-style adversarial generator, random noise queries);
transfer.py: PGD on the substitute, scored on the target.
"""
