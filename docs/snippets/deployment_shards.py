from orchestra_nb import Deployment, Executor, requests


class Where(Executor):
    @requests(on="/where")
    def where(self, docs, parameters):
        for doc in docs:
            doc.tags["shard"] = self.runtime_args.shard_id


# ALL: every shard gets the request and the results are merged; ANY: one shard answers
dep = Deployment(uses=Where, shards=2, polling="ALL")
with dep:
    docs = dep.post("/where", [{"text": "a"}])
    print(sorted(doc.tags["shard"] for doc in docs))  # [0, 1]: both shards answered
