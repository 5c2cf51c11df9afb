"""Moved to :mod:`adam_jax.tools.cli`; this path stays as an alias of it."""

from adam_jax._moved import alias_module

alias_module(__name__, "adam_jax.tools.cli")
