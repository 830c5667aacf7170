# expect: engine.provider.channel (line 11): Parsl removed channels; SSHChannel has no replacement
# Parsl's SSHChannel ran scheduler commands on another host.
from globus_compute_endpoint.endpoint.utils.config import Config
from globus_compute_endpoint.executors import HighThroughputExecutor
from parsl.channels import SSHChannel
from parsl.providers import SlurmProvider

config = Config(
    executors=[
        HighThroughputExecutor(
            provider=SlurmProvider(channel=SSHChannel(hostname="login.example.org")),
        )
    ]
)
