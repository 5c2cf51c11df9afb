"""Applications built on the library: the ``adam-jax`` command (:mod:`~adam_jax.tools.cli`),
the benchmarks (:mod:`~adam_jax.tools.bench`), the demo and the paper's experiments
(:mod:`~adam_jax.tools.paper`). The library (everything outside this package) never imports them.
"""
