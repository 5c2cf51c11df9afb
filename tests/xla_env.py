"""``XLA_FLAGS`` for the test processes: the number of virtual CPU devices.

Plain strings: ``conftest.py`` reads this before JAX is imported.

XLA's default patience in collectives stays. XLA:CPU (jaxlib 0.10.2) with eight virtual devices
on the 2-core machine now and then deadlocks in a collective (every device thread idle, the caller
waiting in ``Execute``; CI of 2026-12-02, the docs examples' process). XLA then aborts the process
after 60 s, which fails the test at once; a longer patience would only make it hang first.
"""


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a process with ``devices`` virtual CPU devices."""
    return f"--xla_force_host_platform_device_count={devices}"
