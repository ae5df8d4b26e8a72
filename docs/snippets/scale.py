from orchestra_nb import Doc, Flow

f = Flow().add(name="encoder", replicas=1)

with f:
    f.scale("encoder", 3)  # start two more replicas; requests keep flowing meanwhile
    print(len(f.status()["executors"]["encoder"]))  # 3
    f.scale("encoder", 1)  # drain and stop two
    print(len(f.status()["executors"]["encoder"]))  # 1
    print(f.post("/", [Doc(text="still served")]).texts)
