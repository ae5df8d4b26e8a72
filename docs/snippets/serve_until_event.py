import threading

from orchestra_nb import Flow


def serve(stop_event: threading.Event) -> None:
    """Serve a Flow until `stop_event` is set."""
    f = Flow().add(name="echo")
    with f:
        f.block(stop_event=stop_event)


stop = threading.Event()
t = threading.Thread(target=serve, args=(stop,), name="serving-flow")
t.start()

# ... do other work while the Flow serves ...

stop.set()  # block() returns and the Flow closes
t.join(timeout=60)
assert not t.is_alive()
