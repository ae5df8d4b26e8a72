from orchestra_nb import Doc, Executor, Flow, requests


class Greeter(Executor):
    @requests(on="/greet")
    def greet(self, docs, parameters):
        for doc in docs:
            doc.text = f"hello {doc.text}"


f = Flow().add(uses=Greeter, name="greeter", replicas=2)
f.start()
print(f.post("/greet", [Doc(text="ada")]).texts)  # ['hello ada']


# in a notebook: edit and re-run the cell that defines the class ...
class Greeter(Executor):
    @requests(on="/greet")
    def greet(self, docs, parameters):
        for doc in docs:
            doc.text = f"good morning {doc.text}"


# ... then roll the replicas onto it, one at a time, without losing a request
f.reload("greeter", Greeter)
print(f.post("/greet", [Doc(text="ada")]).texts)  # ['good morning ada']
f.close()
