# expect: executors= must hold exactly one executor
from globus_compute_endpoint.endpoint.utils.config import Config
from globus_compute_endpoint.executors import HighThroughputExecutor

config = Config(executors=[HighThroughputExecutor(label="a"), HighThroughputExecutor(label="b")])
