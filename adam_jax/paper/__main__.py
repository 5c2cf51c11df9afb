import sys

from adam_jax.paper.cli import main

sys.exit(main())
