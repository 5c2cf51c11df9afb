from adam_jax import _extras

_extras.exit_if_missing("paper", "python -m adam_jax.paper")

from adam_jax.tools.interrupt import leave  # noqa: E402
from adam_jax.tools.paper.cli import main  # noqa: E402 (needs the extra checked above)

leave(main())
