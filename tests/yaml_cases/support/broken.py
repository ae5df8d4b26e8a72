class Broken(Executor)
    pass
