"""Moved to :mod:`adam_jax.tools.paper`; ``adam_jax.paper.X`` stays an alias of
``adam_jax.tools.paper.X``, and ``python -m adam_jax.paper`` still runs the experiments."""

from adam_jax._moved import alias_package_modules

alias_package_modules(__name__, "adam_jax.tools.paper")
