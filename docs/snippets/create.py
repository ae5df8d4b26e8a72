from orchestra_nb import Deployment, Flow

dep = Deployment()  # one Executor (a pass-through) behind its own gateway
f = Flow()  # an empty pipeline: just the gateway

with dep, f:  # starting both; leaving the block stops every process they started
    assert dep.is_ready() and f.is_ready()
