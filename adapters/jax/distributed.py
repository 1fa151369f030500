"""Joining a run of several processes (``jax.distributed``), and which one this process is.

Every process runs the same workflow; the mesh then spans the devices of all of them
(``sharding.py``), and XLA moves data between processes (over gloo on CPUs). A process that
stops answering for ``timeout_s`` seconds is taken for dead, and JAX's coordination service
ends every other process with an error that says so, instead of leaving it waiting in a
collective forever; the run then continues with ``--resume``.
"""

from __future__ import annotations

import jax

from galley.adapters.jax.mesh import Distributed
from galley.core.errors import ConfigError


def join(options: Distributed) -> None:
    """Connect this process to the run's others (once; again with the same options is a
    no-op). Before any JAX computation: JAX fixes its devices at the first."""
    if jax.distributed.is_initialized():
        return
    # CPUs exchange data between processes over gloo; other platforms use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # type: ignore[no-untyped-call]
    try:
        jax.distributed.initialize(
            coordinator_address=options.coordinator,
            num_processes=options.num_processes,
            process_id=options.process_id,
            heartbeat_timeout_seconds=options.timeout_s,
            initialization_timeout=options.start_timeout_s,
        )
    except (RuntimeError, ValueError) as e:
        # JAX names its own arguments: say galley's settings instead.
        reason = str(e)
        for jax_name, ours in _OUR_NAMES.items():
            reason = reason.replace(jax_name, ours)
        if options.coordinator is None and "coordinator" in str(e):
            reason += (
                " (no coordinator was given and none was found in the environment: give "
                'adapters.training.distributed = {coordinator = "HOST:PORT", num_processes = N, '
                "process_id = I}, or launch under SLURM, Open MPI, Kubernetes or a Cloud TPU pod)"
            )
        raise ConfigError(f"adapters.training.distributed: could not join the run: {reason}") from e


_OUR_NAMES = {
    "coordinator_address": "coordinator",
    "heartbeat_timeout_seconds": "timeout_s",
    "initialization_timeout": "start_timeout_s",
}
