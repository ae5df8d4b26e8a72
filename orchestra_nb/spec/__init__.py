"""The data model of an orchestration: one typed spec that builders, YAML, CLI, runtime and exports read."""

from orchestra_nb.spec.models import DeploymentSpec, ExecutorSpec, FlowSpec, GatewaySpec

__all__ = ["DeploymentSpec", "ExecutorSpec", "FlowSpec", "GatewaySpec"]
