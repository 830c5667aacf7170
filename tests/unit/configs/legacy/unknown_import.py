# expect: (line 3): cannot import name 'DockerRouter'
# expect: known names: Config
from globus_compute_endpoint.engines import DockerRouter  # noqa: F401

config = None
