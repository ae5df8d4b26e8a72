import httpx

from orchestra_nb import Doc, Executor, Flow, requests


class Encoder(Executor):
    @requests(on="/index")
    def index(self, docs, parameters):
        pass


f = Flow(protocol=["grpc", "http"], metrics=True).add(uses=Encoder, name="encoder")

with f:
    f.post("/index", [Doc(text="count me")])

    # the HTTP gateway serves its own metrics at /metrics ...
    text = httpx.get(f"http://127.0.0.1:{f.ports['http']}/metrics").text
    print([line for line in text.splitlines() if line.startswith("orchestra_gateway_requests_total")])
    # ['orchestra_gateway_requests_total{endpoint="/index",executor="encoder"} 1.0']

    # ... and every process has a Prometheus scrape port, listed in status()
    status = f.status()
    replica = status["executors"]["encoder"][0]
    print(status["metrics_port"], replica["metrics_port"])
    text = httpx.get(f"http://127.0.0.1:{replica['metrics_port']}/metrics").text
    assert "orchestra_executor_requests_total" in text
