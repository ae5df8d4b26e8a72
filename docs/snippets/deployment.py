from orchestra_nb import Client, Deployment, Doc, Executor, requests


class Upper(Executor):
    @requests(on="/run")
    def upper(self, docs, parameters):
        for doc in docs:
            doc.text = doc.text.upper()


dep = Deployment(uses=Upper, name="upper", replicas=2, protocol=["grpc", "http"])

with dep:
    print(dep.post("/run", [Doc(text="hello")]).texts)  # ['HELLO']

    # any client reaches it on the ports it reports
    client = Client(port=dep.ports["http"], protocol="http")
    print(client.post("/run", [Doc(text="over http")]).texts)  # ['OVER HTTP']
    assert len(dep.status()["executors"]["upper"]) == 2  # two replicas
