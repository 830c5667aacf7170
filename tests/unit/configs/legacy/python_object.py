# expect: engine.block_error_handler (line 11): a Python function cannot be expressed
# A callable cannot be written in config.yaml, so it cannot come from config.py either.
from globus_compute_endpoint.endpoint.config import Config
from globus_compute_endpoint.engines import GlobusComputeEngine


def handler(executor, status):
    pass


config = Config(engine=GlobusComputeEngine(block_error_handler=handler))
