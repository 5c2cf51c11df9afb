from adam_jax.cli import run

run()
