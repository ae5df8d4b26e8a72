from orchestra_nb import Deployment, Doc, Flow

# every process (gateway and replicas) logs with this configuration
f = Flow(log_config="./logging.json.yml").add(name="echo")
dep = Deployment(log_config="./logging.json.yml")

with f:
    f.post("/", [Doc(text="hi")])
    print(f.logs("gateway", n=1))  # the gateway's last line, as JSON
