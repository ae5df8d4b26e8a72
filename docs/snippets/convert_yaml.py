from orchestra_nb import Deployment, Executor, Flow, load_config, requests

f = Flow.load_config("flow.yml")  # flow.yml and executors.py are shown above
dep = Deployment.load_config("deployment.yml")
anything = load_config("flow.yml")  # a Flow or a Deployment, as the file's `jtype` says

f.save_config("copy.yml")  # and back to YAML
assert Flow.load_config("copy.yml").spec == f.spec


# classes defined in a script or a notebook cell are saved as source next to the YAML
class Reverse(Executor):
    @requests(on="/run")
    def reverse(self, docs, parameters):
        for doc in docs:
            doc.text = doc.text[::-1]


Flow(name="rev").add(uses=Reverse, name="reverse").save_config("rev.yml")  # also writes rev_executors.py
with Flow.load_config("rev.yml") as g:
    print(g.post("/run", [{"text": "abc"}]).texts)  # ['cba']
