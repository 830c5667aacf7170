# funcX 1.x: the funcX packages, a scaling strategy object, and the default LocalChannel.
from funcx_endpoint.endpoint.utils.config import Config
from funcx_endpoint.executors import HighThroughputExecutor
from funcx_endpoint.strategies import SimpleStrategy
from parsl.channels import LocalChannel
from parsl.providers import LocalProvider

config = Config(
    executors=[
        HighThroughputExecutor(
            label="fe",
            strategy=SimpleStrategy(max_idletime=60),
            provider=LocalProvider(channel=LocalChannel(), init_blocks=1, max_blocks=2),
        )
    ],
)
