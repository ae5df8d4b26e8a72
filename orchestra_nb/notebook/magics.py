"""`%%orchestra` and `%orchestra`: start, inspect and stop orchestrations from cells.

    %load_ext orchestra_nb.notebook

    %%orchestra f --gpus RR
    jtype: Flow
    executors:
      - name: up
        uses: Upper        # a class defined in an earlier cell

The cell body is YAML, handed to `orchestra_nb.load_config` as text: IPython never variable-expands a
cell magic's body, and the magic is registered without expansion of its line either, so `$VAR` and
`${{ ENV.X }}` reach our own substitution untouched. The object is bound to NAME in the user namespace.
`uses: Name` may name an Executor class of the user namespace (see `_notebook_classes`).

Re-running the cell is the common case and must just work: the object NAME was bound to is closed
first (rebinding would otherwise leave it running and unreachable). A *different* running orchestration
with the same name is only closed with `--replace`; without it the magic refuses and says how to go on,
so a cell never silently stops a Flow that another cell started. A Flow whose YAML keeps the default
name 'flow' takes NAME, so two magic cells never replace each other through the per-kernel registry.

Mistakes are reported as IPython `UsageError`s, which a notebook shows as one line without a
traceback through our YAML loader: a config error names the *cell* line and column (the YAML starts on
the cell's second line), a `uses:` that misspells a class defined in the notebook gets a "did you mean",
and a bad number or executor name in `%orchestra scale|logs` says which argument was wrong.

The magics are registered as plain functions with `register_magic_function` rather than through the
`Magics` class decorators, which keeps this module the same on IPython 7.34 and 9 and typed under mypy.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
from typing import Any

__all__ = ["EXPORT_FORMATS", "load_ipython_extension"]

EXPORT_FORMATS = ("yaml", "compose", "k8s", "kubernetes")
_PLACEHOLDER = "orchestra_nb.notebook.cell."  # a dotted path the YAML loader accepts unimported
_NO_VAR_EXPAND = "_ipython_magic_no_var_expand"  # what IPython's @no_var_expand sets (7.3 and later)


def _usage_error(message: str) -> Exception:
    from IPython.core.error import UsageError

    error: Exception = UsageError(message)
    return error


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would sys.exit; a magic must raise instead
        raise _usage_error(f"{self.prog}: {message}\n{self.format_usage()}")


def _cell_parser() -> _Parser:
    p = _Parser(prog="%%orchestra", add_help=False)
    p.add_argument("name", help="variable to bind the orchestration to")
    p.add_argument("--replace", action="store_true",
                   help="close a running orchestration of the same name started elsewhere")
    p.add_argument("--gpus", default=None, help="gpus for every executor: a count, 'RR', or '0,1'")
    p.add_argument("--tunnel", nargs="?", const="ngrok", default=None, help="expose over a tunnel")
    p.add_argument("--export", nargs=2, metavar=("FORMAT", "PATH"), default=None,
                   help=f"also write the config: FORMAT is one of {', '.join(EXPORT_FORMATS)}")
    p.add_argument("--no-panel", action="store_true", help="do not display the panel")
    return p


def _config_error(exc: Exception, cell: str, classes: dict[str, type]) -> Exception:
    """A ConfigError from the cell's YAML, said in the cell's terms: cell line numbers (the magic line
    is line 1), no placeholder paths, and close matches for a misspelt notebook class in `uses:`."""
    message = str(exc).replace(_PLACEHOLDER, "")
    message = re.sub(r"^<string>:(\d+):(\d+): ",
                     lambda m: f"cell line {int(m.group(1)) + 1}, column {m.group(2)}: ", message)
    message = re.sub(r"^<string>: ", "", message)
    hints = []
    for name in re.findall(r"\buses:[ \t]*([A-Za-z_]\w*)[ \t]*(?:$|[,}#])", cell, re.MULTILINE):
        if name in classes:
            continue
        close = difflib.get_close_matches(name, sorted(classes), n=1, cutoff=0.6)
        if close:
            hints.append(f"uses: {name!r} is not a class of this notebook; did you mean {close[0]!r}?")
        elif classes:
            hints.append(f"uses: {name!r} is not a class of this notebook (its Executor classes: "
                         f"{', '.join(sorted(classes))}); define it in a cell above and run that cell first")
        else:
            hints.append(f"uses: {name!r} is not defined in this notebook; define the Executor class in "
                         "a cell above and run that cell first")
    return _usage_error("%%orchestra: " + message + "".join(f"\n{h}" for h in hints))


def _number(command: str, what: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise _usage_error(f"%orchestra {command}: {what} must be a whole number of at least {minimum}, "
                           f"got {value!r}")
    return n


def _gpus(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _notebook_classes(text: str, namespace: dict[str, Any]) -> tuple[str, dict[str, type]]:
    """Let `uses: Name` name an Executor class defined in a cell.

    The YAML loader never imports user code and so cannot see a cell's classes; each `uses: Name` whose
    Name is an Executor subclass in the user namespace is rewritten to a placeholder dotted path that
    passes the loader's checks, and `_with_overrides` swaps the class object in afterwards.
    """
    from orchestra_nb.executor import Executor

    classes = {k: v for k, v in namespace.items()
               if isinstance(v, type) and issubclass(v, Executor) and v is not Executor and not k.startswith("_")}
    if not classes:
        return text, {}
    names = "|".join(re.escape(k) for k in sorted(classes, key=len, reverse=True))
    pattern = re.compile(rf"(\buses:[ \t]*)({names})(?=[ \t]*(?:$|[,}}#]))", re.MULTILINE)
    return pattern.sub(lambda m: m.group(1) + _PLACEHOLDER + m.group(2), text), classes


def _with_overrides(obj: Any, name: str, gpus: str | None, classes: dict[str, type]) -> Any:
    """A copy of `obj` with the cell's classes swapped in, named NAME when the YAML kept the default
    name 'flow', and with `gpus` on every executor."""
    spec = obj.spec
    update: dict[str, Any] = {}
    if hasattr(spec, "executors") and spec.name == "flow":
        update["name"] = name

    def fix(ex: Any) -> Any:
        changes: dict[str, Any] = {}
        if isinstance(ex.uses, str) and ex.uses.startswith(_PLACEHOLDER):
            changes["uses"] = classes[ex.uses[len(_PLACEHOLDER):]]
        if gpus is not None:
            changes["gpus"] = _gpus(gpus)
        return ex.model_copy(update=changes) if changes else ex

    if hasattr(spec, "executors"):
        executors = [fix(ex) for ex in spec.executors]
        if any(a is not b for a, b in zip(executors, spec.executors, strict=True)):
            update["executors"] = executors
    else:
        executor = fix(spec.executor)
        if executor is not spec.executor:
            update["executor"] = executor
    if not update:
        return obj
    return type(obj).from_spec(spec.model_copy(update=update), base_dir=obj.base_dir)


def export(obj: Any, fmt: str, path: str) -> str:
    """Write `obj`'s config as yaml, compose or k8s to `path`; returns the path."""
    if fmt == "yaml":
        obj.save_config(path)
    elif fmt == "compose":
        obj.to_docker_compose_yaml(path)
    elif fmt in ("k8s", "kubernetes"):
        obj.to_kubernetes_yaml(path)
    else:
        raise _usage_error(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return path


class OrchestraMagics:
    """The state behind `%orchestra` / `%%orchestra`: the shell whose namespace we bind into."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    # ---- lookup ----------------------------------------------------------------------------------
    def find(self, name: str) -> Any:
        """The orchestration bound to variable `name`, else the running one called `name`."""
        from orchestra_nb.orchestration.base import Orchestration
        from orchestra_nb.orchestration.registry import running

        obj = self.shell.user_ns.get(name)
        if isinstance(obj, Orchestration):
            return obj
        for obj in running():
            if obj.name == name:
                return obj
        known = sorted({o.name for o in running()} | {k for k, v in self.shell.user_ns.items()
                                                      if isinstance(v, Orchestration) and not k.startswith("_")})
        raise _usage_error(f"no orchestration called {name!r}; known: {', '.join(known) or 'none'} "
                           "(start one with %%orchestra NAME)")

    # ---- %%orchestra -----------------------------------------------------------------------------
    def cell(self, line: str, cell: str) -> None:
        import orchestra_nb
        from orchestra_nb.orchestration.base import Orchestration, State
        from orchestra_nb.orchestration.registry import running

        args = _cell_parser().parse_args(shlex.split(line))
        if args.gpus is not None:  # checked now, not after the cell's Flow started half its processes
            from orchestra_nb.errors import ConfigError
            from orchestra_nb.runtime.devices import parse_gpus

            try:
                parse_gpus(_gpus(args.gpus))
            except ConfigError as exc:
                raise _usage_error(f"%%orchestra --gpus {args.gpus}: {exc}") from None
        if args.export is not None and args.export[0] not in EXPORT_FORMATS:
            raise _usage_error(f"%%orchestra --export: unknown format {args.export[0]!r}; use one of "
                               f"{', '.join(EXPORT_FORMATS)}")
        if not args.name.isidentifier():
            raise _usage_error(f"%%orchestra: {args.name!r} is not a valid Python variable name")
        if not cell.strip():
            raise _usage_error("%%orchestra: the cell is empty; write the Flow or Deployment YAML below "
                               "the magic line")
        from orchestra_nb.errors import ConfigError

        text, classes = _notebook_classes(cell, self.shell.user_ns)
        try:
            obj = orchestra_nb.load_config(text)
        except ConfigError as exc:
            raise _config_error(exc, cell, classes) from None
        if not isinstance(obj, Orchestration):
            raise _usage_error(f"%%orchestra: the YAML describes a {type(obj).__name__}, "
                               "not a Flow or Deployment (check its jtype)")
        obj = _with_overrides(obj, args.name, args.gpus, classes)
        if args.export is not None:
            export(obj, *args.export)

        previous = self.shell.user_ns.get(args.name)
        if isinstance(previous, Orchestration) and previous.state is not State.CLOSED:
            previous.close()  # a re-run rebinds NAME; the old object must not keep serving unseen
        clash = [o for o in running() if o.name == obj.name and o is not previous]
        if clash and not args.replace:
            raise _usage_error(f"%%orchestra: a {type(clash[0]).__name__} named {obj.name!r} is already "
                               "running (started by another cell); pass --replace to close it, or "
                               "give this one another `name:` in the YAML")
        obj.start()
        self.shell.user_ns[args.name] = obj
        if args.tunnel:
            obj.expose(args.tunnel)
        if not args.no_panel:
            from orchestra_nb.notebook.display import ipython_display

            ipython_display(obj)

    # ---- %orchestra ------------------------------------------------------------------------------
    def line(self, line: str) -> Any:
        words = shlex.split(line)
        usage = ("usage: %orchestra ls | status NAME | logs NAME [N] | stop NAME | "
                 "scale NAME EXECUTOR N | reload NAME EXECUTOR [CLASS] | export NAME FORMAT PATH")
        if not words:
            raise _usage_error(usage)
        cmd, rest = words[0], words[1:]
        arity = {"ls": (0, 0), "status": (1, 1), "logs": (1, 2), "stop": (1, 1), "scale": (3, 3),
                 "reload": (2, 3), "export": (3, 3)}
        if cmd not in arity:
            close = difflib.get_close_matches(cmd, list(arity), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _usage_error(f"%orchestra: unknown command {cmd!r}{hint}\n{usage}")
        low, high = arity[cmd]
        if not low <= len(rest) <= high:
            raise _usage_error(f"%orchestra {cmd}: expected {low}" + (f"-{high}" if high != low else "")
                               + f" argument(s), got {len(rest)}\n{usage}")
        if cmd == "ls":
            return self.ls()
        obj = self.find(rest[0])
        if cmd == "status":
            from orchestra_nb.notebook.display import ipython_display

            ipython_display(obj)
        elif cmd == "logs":
            n = _number("logs", "N (how many lines per process)", rest[1], 1) if len(rest) > 1 else 50
            print("\n".join(obj.logs(None, n)))
        elif cmd == "stop":
            was = obj.state.value
            obj.close()
            print(f"{type(obj).__name__} {obj.name!r} was already {was}" if was in ("closed", "created")
                  else f"stopped {type(obj).__name__} {obj.name!r}")
        elif cmd == "scale":
            if not callable(getattr(obj, "scale", None)):
                raise _usage_error(f"%orchestra scale: {type(obj).__name__} cannot scale while running yet")
            n = _number("scale", "N (the replica count)", rest[2], 1)
            if obj.state.value != "ready":
                raise _usage_error(f"%orchestra scale: {type(obj).__name__} {obj.name!r} is {obj.state.value}, "
                                   "not serving; start it first (re-run its %%orchestra cell)")
            try:
                obj.scale(rest[1], n)
            except (KeyError, ValueError) as exc:
                raise _usage_error(f"%orchestra scale: {exc.args[0] if exc.args else exc}") from None
            print(f"{rest[1]!r} of {obj.name!r} now runs {n} replica(s)")
        elif cmd == "reload":
            self.reload(obj, rest[1], rest[2] if len(rest) > 2 else None)
        elif cmd == "export":
            print(f"wrote {export(obj, rest[1], rest[2])}")
        return None

    def reload(self, obj: Any, executor: str, class_name: str | None) -> None:
        """Roll `executor` onto the class now bound to `class_name` (default: its current class's
        name, i.e. the class as its cell was just re-run)."""
        from orchestra_nb.executor import Executor

        try:
            current = obj.flow_spec().executor(executor).uses
        except KeyError:
            names = [e.name for e in obj.flow_spec().executors]
            raise _usage_error(f"%orchestra reload: no executor {executor!r}; the executors are {names}") from None
        name = class_name or (current.__name__ if isinstance(current, type) else None)
        new = self.shell.user_ns.get(name) if name else None
        if not (isinstance(new, type) and issubclass(new, Executor)):
            raise _usage_error(f"%orchestra reload: no Executor class {name!r} in the notebook; define it in a "
                               "cell (or name it: %orchestra reload NAME EXECUTOR CLASS)")
        obj.reload(executor, new)
        print(f"reloaded {executor!r} onto {new.__name__}: every replica rolled")

    def ls(self) -> None:
        from orchestra_nb.orchestration.base import Orchestration
        from orchestra_nb.orchestration.registry import running

        bound = {id(v): k for k, v in self.shell.user_ns.items()
                 if isinstance(v, Orchestration) and not k.startswith("_")}
        objs = running()
        if not objs:
            print("no orchestration is running")
        for obj in objs:
            ports = ", ".join(f"{p}:{n}" for p, n in obj.ports.items())
            var = bound.get(id(obj), "-")
            print(f"{var:<12} {type(obj).__name__:<10} {obj.name:<16} {obj.state.value:<9} {ports}")


def load_ipython_extension(ipython: Any) -> None:
    """Register `%orchestra` and `%%orchestra` (called by `%load_ext`)."""
    magics = OrchestraMagics(ipython)

    def orchestra_line(line: str) -> Any:
        return magics.line(line)

    def orchestra_cell(line: str, cell: str) -> None:
        magics.cell(line, cell)

    for func in (orchestra_line, orchestra_cell):
        setattr(func, _NO_VAR_EXPAND, True)
        func.__doc__ = __doc__
    ipython.register_magic_function(orchestra_line, magic_kind="line", magic_name="orchestra")
    ipython.register_magic_function(orchestra_cell, magic_kind="cell", magic_name="orchestra")
