from orchestra_nb import Doc, Flow

f = Flow().add(name="first").add(name="second")

# as a context manager: started on entry, stopped (processes and ports released) on exit
with f:
    print(f.post("/", [Doc(text="hello")]).texts)  # ['hello']

# or by hand, e.g. across notebook cells
f.start()
print(f.ports)  # {'grpc': 41207}: free ports are chosen at start unless you give port=
f.close()
f.close()  # closing twice is harmless
