from adam_jax.tools.paper import __main__  # noqa: F401 (running it is the point)
