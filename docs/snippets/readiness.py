import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestra_nb import Flow

f = Flow(protocol=["grpc", "http"]).add(name="encoder", replicas=2)

with f:  # start() returns once every replica and the gateway are ready
    print(f.is_ready())  # True: every replica reports ready
    print(f.dry_run())  # True: an empty request went through every hop of the graph

    http = f"http://127.0.0.1:{f.ports['http']}"
    print(httpx.get(f"{http}/health").status_code)  # 200: the gateway process is alive
    print(httpx.get(f"{http}/ready").status_code)  # 200: every executor replica is reachable

    # the gRPC front door (and every replica) answers the standard gRPC health check
    with grpc.insecure_channel(f"127.0.0.1:{f.ports['grpc']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))  # SERVING

print(f.is_ready())  # False once closed
