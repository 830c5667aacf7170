# Globus Compute 3.x: an engine instead of executors, PBS Pro with mpiexec.
from globus_compute_endpoint.endpoint.config import Config
from globus_compute_endpoint.engines import GlobusComputeEngine
from parsl.addresses import address_by_hostname
from parsl.launchers import MpiExecLauncher
from parsl.providers import PBSProProvider

provider = PBSProProvider(
    account="MyProject",
    queue="debug",
    cpus_per_node=32,
    select_options="ngpus=4",
    launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1"),
    walltime="01:00:00",
)

config = Config(
    engine=GlobusComputeEngine(
        max_workers_per_node=4,
        available_accelerators=4,
        address=address_by_hostname(),
        provider=provider,
        job_status_kwargs={"max_idletime": 300},
    ),
    amqp_port=443,
)
