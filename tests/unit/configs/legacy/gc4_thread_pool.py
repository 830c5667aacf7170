# Globus Compute 4.x: threads only.
from globus_compute_endpoint.endpoint.config import UserEndpointConfig
from globus_compute_endpoint.engines import ThreadPoolEngine

config = UserEndpointConfig(engine=ThreadPoolEngine(max_workers=2), display_name="threads")
