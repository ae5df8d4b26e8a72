from orchestra_nb import Flow

f = Flow.load_config("flow.yml")

if __name__ == "__main__":
    with f:
        f.block()  # serve until Ctrl-C (SIGINT), then close everything
