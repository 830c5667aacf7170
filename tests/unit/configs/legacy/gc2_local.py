# Globus Compute 2.x: the executor list of that era, one local block.
from globus_compute_endpoint.endpoint.utils.config import Config
from globus_compute_endpoint.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

config = Config(
    display_name="laptop",
    executors=[
        HighThroughputExecutor(
            max_workers_per_node=2,
            provider=LocalProvider(
                init_blocks=1,
                min_blocks=0,
                max_blocks=1,
            ),
        )
    ],
)
