from orchestra_nb import Doc, Executor, Flow, requests


class Tag(Executor):
    def __init__(self, label: str = "", **kwargs):
        super().__init__(**kwargs)
        self.label = label

    @requests
    def tag(self, docs, parameters):  # no `on=`: serves every endpoint
        for doc in docs:
            doc.tags[self.label] = True


f = (
    Flow(protocol=["grpc", "http"])
    .add(uses=Tag, name="clean", uses_with={"label": "clean"})
    # two branches after `clean`, run in parallel
    .add(uses=Tag, name="left", needs="clean", uses_with={"label": "left"})
    .add(uses=Tag, name="right", needs="clean", uses_with={"label": "right"})
    # a join: waits for both branches and merges their docs by id
    .needs(["left", "right"], name="join")
)

with f:
    (doc,) = f.post("/index", [Doc(text="one")])
    print(sorted(doc.tags))  # ['clean', 'left', 'right']
