import sys

from adam_jax.cli import main

sys.exit(main())
