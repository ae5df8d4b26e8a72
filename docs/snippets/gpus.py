from orchestra_nb import Doc, Executor, Flow, requests


class Model(Executor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.device = self.runtime_args.device  # 'cuda' or 'cpu': move your model here (torch etc.)

    @requests(on="/where")
    def where(self, docs, parameters):
        for doc in docs:
            doc.tags["device"] = self.device


# 'auto': one GPU per replica, most free memory first; CPU where there is no GPU,
# so the same notebook runs on a laptop, a CPU Colab and a GPU box.
f = Flow().add(uses=Model, name="model", replicas=2, gpus="auto")
with f:
    for replica in f.status()["executors"]["model"]:
        print(replica["replica"], replica["device"])
    print(f.post("/where", [Doc()])[0].tags["device"])
