"""The Section 6 experiments of Kingma & Ba (2015): data, models, runner, figures and claims.

Run them with ``adam-jax reproduce all --quick`` or ``python -m adam_jax.paper all --quick``.
Not imported by ``import adam_jax``: it needs the ``paper`` extra (matplotlib, tqdm, scikit-learn).
"""
