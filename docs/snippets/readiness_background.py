from orchestra_nb import Doc, Flow

f = Flow().add(name="slow_to_load", replicas=2)

f.start(wait=False)  # returns at once; replicas load their models in the background
# ... e.g. define the next cells, prepare data ...
f.wait_ready(timeout=120)  # blocks until ready, or raises the start-up error (ExecutorStartupError)
print(f.is_ready(), f.post("/", [Doc(text="ready")]).texts)  # True ['ready']
f.close()
