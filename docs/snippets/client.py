import httpx

from orchestra_nb import Client, Doc, Executor, Flow, requests


class Count(Executor):
    @requests(on="/count")
    def count(self, docs, parameters):
        for doc in docs:
            doc.tags["words"] = len(doc.text.split())
        return {"seen": len(docs)}  # a dict a handler returns reaches the caller in `.results`


f = Flow(protocol=["grpc", "http"]).add(uses=Count, name="counter")

with f:
    # the orchestration is itself a client
    docs = f.post("/count", [Doc(text="a b c")])
    print(docs[0].tags, docs.results)  # {'words': 3} {'counter': {'seen': 1}}

    # from another process or machine: a Client on one of the ports f.ports reports
    with Client(host="127.0.0.1", port=f.ports["grpc"]) as client:  # protocol="grpc" by default
        print(client.post("/count", [Doc(text="one two")])[0].tags)  # {'words': 2}

    # more docs than request_size (default 100) go in several requests: `.results` then holds a list
    docs = f.post("/count", [Doc(text="x")] * 5, request_size=2)
    print(len(docs), docs.results)  # 5 {'counter': [{'seen': 2}, {'seen': 2}, {'seen': 1}]}

    # any HTTP client: POST /<endpoint> with JSON {"docs": [...], "parameters": {...}}
    reply = httpx.post(f"http://127.0.0.1:{f.ports['http']}/count",
                       json={"docs": [{"text": "over plain http"}], "parameters": {}})
    print(reply.status_code, reply.json()["docs"][0]["tags"])  # 200 {'words': 3}
