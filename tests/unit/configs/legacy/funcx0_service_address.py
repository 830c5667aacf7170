# expect: funcx_service_address (line 9): funcX 0.x setting
# expect: engine.scheduler_mode (line 12): funcX container routing
# funcX 0.x: the service address and container routing lived in the config.
from funcx_endpoint.endpoint.utils.config import Config
from funcx_endpoint.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

config = Config(
    funcx_service_address="https://api.funcx.org/v1",
    executors=[
        HighThroughputExecutor(
            scheduler_mode="soft",
            provider=LocalProvider(init_blocks=1),
        )
    ],
)
