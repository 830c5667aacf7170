# Globus Compute 4.x manager: no engine, a PAM session per user endpoint.
from globus_compute_endpoint.endpoint.config import ManagerEndpointConfig
from globus_compute_endpoint.endpoint.config.pam import PamConfiguration

config = ManagerEndpointConfig(
    public=True,
    pam=PamConfiguration(enable=True, service_name="compute"),
    mu_child_ep_grace_period_s=10,
)
