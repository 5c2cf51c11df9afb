"""``XLA_FLAGS`` for the test processes: virtual CPU devices, and patience in their collectives.

XLA:CPU aborts the whole process (a check failure, not a Python error) when one device's thread
reaches a collective more than about 60 s after the others. On a loaded 2-core CI machine, eight
virtual devices' threads can fall that far apart (CI of 2026-12-02 lost the docs examples' process
that way), so test processes wait up to 15 minutes; the tests' own timeouts still end a real hang.
Plain strings: ``conftest.py`` reads this before JAX is imported.
"""

PATIENCE = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
    "--xla_cpu_collective_timeout_seconds=900"
)


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a process with ``devices`` virtual CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {PATIENCE}"
