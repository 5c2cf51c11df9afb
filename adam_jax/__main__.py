from adam_jax.tools.cli import run

run()
