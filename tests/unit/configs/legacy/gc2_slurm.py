# Globus Compute 2.x on Slurm; the address function is called positionally.
from globus_compute_endpoint.endpoint.utils.config import Config
from globus_compute_endpoint.executors import HighThroughputExecutor
from parsl.addresses import address_by_interface
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

user_opts = {
    "partition": "debug",
    "account": "abc123",
    "worker_init": "source ~/compute-env/bin/activate",
}

config = Config(
    executors=[
        HighThroughputExecutor(
            max_workers_per_node=2,
            address=address_by_interface("ib0"),
            provider=SlurmProvider(
                partition=user_opts["partition"],
                account=user_opts["account"],
                launcher=SrunLauncher(),
                scheduler_options="#SBATCH --exclusive",
                worker_init=user_opts["worker_init"],
                nodes_per_block=1,
                init_blocks=0,
                max_blocks=1,
                walltime="00:30:00",
            ),
        )
    ],
    heartbeat_period=60,
    idle_heartbeats_soft=10,
)
