"""Public URLs to a running Flow's HTTP gateway, always behind a token.

``f.expose()`` turns token auth on at the gateway, waits until the gateway refuses a request without the
token, and only then opens the public URL; ``f.unexpose()`` closes the URL first and restores the token
the gateway had before. A public URL is never open while the gateway accepts anonymous requests.

Decisions:

* **One interface, one class per provider.** A provider is constructed from the caller's keyword
  arguments and checks everything it needs there (the ngrok authtoken, being inside Colab, the Binder
  environment), so a missing piece is a `ConfigError` raised before any process starts and before the
  gateway's token is touched. `open(local_url)` returns the public URL, `close()` releases it. Adding a
  provider is one class and one entry in `PROVIDERS`.
* **ngrok through pyngrok 9** (pinned ``>=9,<10`` by the ``tunnel`` extra). The agent config version is
  set explicitly ("3", the endpoints API) rather than left to pyngrok's default. The authtoken comes from
  ``authtoken=``, ``NGROK_AUTHTOKEN`` or Colab's secrets (``google.colab.userdata``), in that order; it is
  written to a private (0600) config file in a temporary directory instead of being passed as
  ``--authtoken``, where any user could read it from the process list, and the file is removed as soon
  as the agent has started (pyngrok then writes a token-free default there). The agent runs in its own session
  (``start_new_session``): Jupyter's interrupt signals the kernel's process group, and interrupting a
  cell must not cut the tunnel. pyngrok keeps one agent per binary path; we count our tunnels on each
  agent we started and stop the agent (kill and reap) when the last one closes, so no ngrok outlives the
  Flows that use it. An agent the user started through pyngrok is used but never stopped.
* **colab**: ``google.colab.kernel.proxyPort`` gives an HTTPS URL that only the signed-in user can open;
  **binder**: jupyter-server-proxy's ``<prefix>proxy/<port>/`` under ``JUPYTERHUB_SERVICE_PREFIX``, which
  JupyterHub's login guards; **auto** picks colab on Colab, binder under JupyterHub, else ngrok. The token
  is required on all of them: a proxy's login is no substitute for the gateway's own auth.
* **Race-free switch.** `set_token` returns once the gateway has acknowledged the new token. `expose`
  then checks the front door itself before opening anything: `/status` must refuse a request without the
  token (401) and serve one with it (200), within a deadline; otherwise nothing is opened and the old
  token is restored. Two loopback requests buy the certainty that what is published is locked.
* **No stray agent.** The agent is stopped with the last tunnel on it, when the Flow closes, and at exit
  (the per-kernel registry closes every Flow; pyngrok also terminates it). If the kernel is killed
  outright, the agent's stdout pipe (read by pyngrok in the kernel) breaks, and a Go program such as
  ngrok exits on its next log line to a broken stdout.
* **gRPC** goes public only on request (``expose(..., grpc=True)``, ngrok only): a second endpoint with
  an HTTP/2 upstream, which gRPC clients reach with TLS on port 443. Colab's and Binder's proxies speak
  HTTP/1.1 and cannot carry it; asking them is a `ConfigError`. A free ngrok account may allow only one
  endpoint, so the default publishes the HTTP gateway alone.
* The `Tunnel` returned hides the token in its repr, so displaying it in a shared notebook does not leak
  it; `tunnel.token` and `tunnel.curl` give it on purpose.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from orchestra_nb.errors import ConfigError, LifecycleError, MissingExtraError, TransportError

__all__ = ["PROVIDERS", "Tunnel", "check_expose", "expose", "tunnel_of", "unexpose"]

NGROK_CONFIG_VERSION = "3"
AUTH_SWITCH_TIMEOUT = 10.0
_AUTHTOKEN_HELP = (
    "get one at https://dashboard.ngrok.com/get-started/your-authtoken, then pass "
    "expose('ngrok', authtoken=...), set the NGROK_AUTHTOKEN environment variable, or on Colab add a "
    "secret named NGROK_AUTHTOKEN (key icon in the left bar) and allow this notebook to read it")


@dataclass(frozen=True)
class Tunnel:
    """A public URL to a Flow's HTTP gateway and the token it requires."""

    url: str
    token: str = field(repr=False)
    provider: str
    local_url: str
    grpc_url: str | None = None  # with expose(..., grpc=True): gRPC clients connect here (TLS, port 443)
    pid: int | None = None  # the tunnel agent's process, when the provider runs one

    @property
    def curl(self) -> str:
        """A command that posts one document through the public URL."""
        body = '{"on": "/", "docs": [{"text": "hello"}]}'
        return (f"curl -X POST '{self.url}/post' -H 'Authorization: Bearer {self.token}' "
                f"-H 'Content-Type: application/json' -d '{body}'")

    def __repr__(self) -> str:
        grpc = f", grpc_url={self.grpc_url!r}" if self.grpc_url else ""
        return (f"Tunnel(url={self.url!r}{grpc}, token=<hidden: use .token>, provider={self.provider!r}, "
                f"local_url={self.local_url!r})")

    def __str__(self) -> str:
        return self.url


class Provider(Protocol):
    """What a tunnel provider does; construct it from the caller's options (raising ConfigError)."""

    name: str
    pid: int | None

    def open(self, local_url: str) -> str: ...

    def close(self) -> None: ...


class GrpcProvider(Provider, Protocol):
    """A provider that can also publish the gRPC port (an HTTP/2 upstream)."""

    def open_grpc(self, local_address: str) -> str: ...


# ---- ngrok -------------------------------------------------------------------------------------------
@dataclass
class _Agent:
    config: Any  # pyngrok.conf.PyngrokConfig
    directory: str | None  # our private config dir; None when the agent is not ours
    users: int = 0


_agents: dict[str, _Agent] = {}
_agents_lock = threading.Lock()


def _ngrok_authtoken(given: str | None) -> str:
    if given:
        return given
    env = os.environ.get("NGROK_AUTHTOKEN")
    if env:
        return env
    if "google.colab" in sys.modules or _importable("google.colab"):
        try:
            from google.colab import userdata

            secret = userdata.get("NGROK_AUTHTOKEN")
        except Exception:  # not granted, not defined, or not a Colab runtime after all
            secret = None
        if secret:
            return str(secret)
    raise ConfigError(f"provider 'ngrok' needs an ngrok authtoken and none was found; {_AUTHTOKEN_HELP}")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class NgrokProvider:
    """An ngrok HTTPS endpoint through pyngrok's agent."""

    name = "ngrok"

    def __init__(self, authtoken: str | None = None, ngrok_path: str | None = None,
                 region: str | None = None, startup_timeout: int = 15) -> None:
        try:
            from pyngrok import conf
        except ImportError:
            raise MissingExtraError("provider 'ngrok' needs pyngrok: pip install 'orchestra-nb[tunnel]'") from None
        self.authtoken = _ngrok_authtoken(authtoken)
        self.ngrok_path = ngrok_path or os.environ.get("PYNGROK_NGROK_PATH") or conf.DEFAULT_NGROK_PATH
        self.region = region
        self.startup_timeout = startup_timeout
        self.pid: int | None = None
        self._public_urls: list[str] = []

    def _agent(self) -> _Agent:
        from pyngrok import conf, process

        agent = _agents.get(self.ngrok_path)
        if agent is not None and process.is_process_running(self.ngrok_path):
            return agent
        if agent is not None and agent.directory:
            shutil.rmtree(agent.directory, ignore_errors=True)
        running = process.is_process_running(self.ngrok_path)
        directory = None if running else tempfile.mkdtemp(prefix="orchestra-nb-ngrok-")
        config_path = None
        if directory is not None:
            config_path = os.path.join(directory, "ngrok.yml")
            fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                # JSON is YAML: no quoting surprises in the token
                import json

                f.write(f"version: {json.dumps(NGROK_CONFIG_VERSION)}\n"
                        f"agent:\n  authtoken: {json.dumps(self.authtoken)}\n")
        cfg = conf.PyngrokConfig(ngrok_path=self.ngrok_path, config_path=config_path, region=self.region,
                                 start_new_session=True, startup_timeout=self.startup_timeout,
                                 ngrok_version="3", config_version=NGROK_CONFIG_VERSION)
        cfg.auth_token = None  # pyngrok would copy NGROK_AUTHTOKEN onto the command line; the file has it
        agent = _Agent(cfg, directory)
        _agents[self.ngrok_path] = agent
        return agent

    def open(self, local_url: str) -> str:
        return self._connect(local_url, {"url": local_url})

    def open_grpc(self, local_address: str) -> str:
        """An HTTPS endpoint whose upstream speaks HTTP/2 cleartext: gRPC clients connect with TLS."""
        return self._connect(local_address, {"url": f"http://{local_address}", "protocol": "http2"})

    def _connect(self, what: str, upstream: dict[str, str]) -> str:
        from pyngrok import ngrok
        from pyngrok.exception import PyngrokError

        with _agents_lock:
            agent = self._agent()
            try:
                tunnel = ngrok.connect(name=f"orchestra-nb-{uuid.uuid4().hex[:12]}", upstream=upstream,
                                       pyngrok_config=agent.config)
            except PyngrokError as exc:
                self._release(agent)
                raise TransportError(f"ngrok could not open a tunnel to {what}: {exc}") from exc
            agent.users += 1
            self.pid = ngrok.get_ngrok_process(agent.config).proc.pid
            if agent.directory is not None:  # the agent has read it; a killed kernel leaves no secret behind
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(agent.directory, "ngrok.yml"))
            self._public_urls.append(str(tunnel.public_url))
        return str(tunnel.public_url).rstrip("/")

    def close(self) -> None:
        from pyngrok import ngrok

        with _agents_lock:
            agent = _agents.get(self.ngrok_path)
            while agent is not None and self._public_urls:
                with contextlib.suppress(Exception):  # the agent may already be gone
                    ngrok.disconnect(self._public_urls.pop(), pyngrok_config=agent.config)
                agent.users -= 1
            if agent is not None:
                self._release(agent)

    def _release(self, agent: _Agent) -> None:
        from pyngrok import process

        if agent.users > 0 or agent.directory is None:
            return
        process.kill_process(self.ngrok_path)  # kill and reap
        shutil.rmtree(agent.directory, ignore_errors=True)
        _agents.pop(self.ngrok_path, None)


# ---- colab and binder --------------------------------------------------------------------------------
class ColabProvider:
    """Colab's kernel proxy: an HTTPS URL for a local port, open to the signed-in user only."""

    name = "colab"
    pid = None

    def __init__(self) -> None:
        try:
            from google.colab.output import eval_js
        except ImportError:
            raise ConfigError("provider 'colab' works only inside Google Colab (google.colab is not "
                              "importable here); use provider='ngrok' or 'auto'") from None
        self._eval_js = eval_js

    def open(self, local_url: str) -> str:
        port = int(local_url.rsplit(":", 1)[1].split("/")[0])
        url = self._eval_js(f"google.colab.kernel.proxyPort({port})")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise TransportError(f"Colab's proxyPort({port}) returned {url!r}, not an https URL")
        return url.rstrip("/")

    def close(self) -> None:
        return None  # the proxy URL dies with the port; nothing runs on our side


class BinderProvider:
    """jupyter-server-proxy under the JupyterHub server: ``<server>/proxy/<port>``."""

    name = "binder"
    pid = None

    def __init__(self, host: str | None = None) -> None:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if not prefix:
            raise ConfigError("provider 'binder' needs JUPYTERHUB_SERVICE_PREFIX, which Binder and "
                              "JupyterHub set for the user's server; it is not set here. Use "
                              "provider='ngrok' or 'auto'")
        public = os.environ.get("JUPYTERHUB_PUBLIC_URL")  # the server's full URL (JupyterHub >= 4)
        if host:
            base = host.rstrip("/") + "/" + prefix.strip("/")
        elif public:
            base = public.rstrip("/")
        elif os.environ.get("JUPYTERHUB_HOST"):
            base = os.environ["JUPYTERHUB_HOST"].rstrip("/") + "/" + prefix.strip("/")
        else:  # no public host known: a path on the notebook's own origin, usable from its browser tab
            base = "/" + prefix.strip("/")
        self.base = base

    def open(self, local_url: str) -> str:
        port = int(local_url.rsplit(":", 1)[1].split("/")[0])
        return f"{self.base}/proxy/{port}"

    def close(self) -> None:
        return None


PROVIDERS: dict[str, type[Any]] = {"binder": BinderProvider, "colab": ColabProvider, "ngrok": NgrokProvider}


def _resolve(provider: str) -> str:
    if provider != "auto":
        return provider
    if "google.colab" in sys.modules or _importable("google.colab"):
        return "colab"
    if os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        return "binder"
    return "ngrok"


def _make_provider(provider: str, options: dict[str, Any]) -> Provider:
    name = _resolve(provider)
    if name not in PROVIDERS:
        import difflib

        close = difflib.get_close_matches(name, [*PROVIDERS, "auto"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown tunnel provider {provider!r}: expected one of "
                          f"{sorted([*PROVIDERS, 'auto'])}{hint}")
    try:
        made: Provider = PROVIDERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"provider {name!r} got unexpected options {sorted(options)}: {exc}") from None
    return made


# ---- expose / unexpose -------------------------------------------------------------------------------
@dataclass
class _Exposure:
    tunnel: Tunnel
    provider: Provider
    previous_token: str | None


def check_expose(orch: Any, provider: str = "ngrok", **options: Any) -> None:
    """Raise ConfigError if `orch` cannot be exposed through `provider`; starts nothing.

    For `Flow(expose=...)`: call it before starting any process.
    """
    _check_http(orch)
    _make_provider(provider, options)


def _check_http(orch: Any) -> None:
    protocols = list(orch.flow_spec().gateway.protocol)
    if "http" not in protocols:
        raise ConfigError(f"cannot expose {orch._kind} {orch.name!r}: a tunnel needs the HTTP gateway and "
                          f"its protocol is {protocols}; create it with protocol=['grpc', 'http']")


def _check_grpc(orch: Any, made: Provider) -> None:
    protocols = list(orch.flow_spec().gateway.protocol)
    if "grpc" not in protocols:
        raise ConfigError(f"expose(grpc=True): {orch._kind} {orch.name!r} serves {protocols}, no gRPC; "
                          f"create it with protocol=['grpc', 'http']")
    if not hasattr(made, "open_grpc"):
        raise ConfigError(f"provider {made.name!r} cannot publish the gRPC port (its proxy speaks HTTP/1.1 "
                          f"only); use provider='ngrok' for grpc=True")


def tunnel_of(orch: Any) -> Tunnel | None:
    """The open tunnel of `orch`, or None (for the panel and the start-up summary)."""
    exposure = orch.__dict__.get("_tunnel")
    return exposure.tunnel if isinstance(exposure, _Exposure) else None


def expose(orch: Any, provider: str = "ngrok", token: str | None = None, *, grpc: bool = False,
           **options: Any) -> Tunnel:
    """Turn on token auth at `orch`'s gateway, then open a public URL to its HTTP port.

    With `grpc=True` (ngrok only) the gRPC port gets a public endpoint too (`Tunnel.grpc_url`).
    """
    _check_http(orch)
    with orch._lock:
        orch._ready_client()  # LifecycleError unless ready
        current = orch.__dict__.get("_tunnel")
        if isinstance(current, _Exposure):
            if _resolve(provider) == current.tunnel.provider and token in (None, current.tunnel.token):
                return current.tunnel
            raise LifecycleError(f"{orch._kind} {orch.name!r} is already exposed at {current.tunnel.url} "
                                 f"through {current.tunnel.provider!r}; call unexpose() first")
        gw = orch.flow_spec().gateway
        made = _make_provider(provider, options)  # every check happens here, before anything changes
        if grpc:
            _check_grpc(orch, made)
        previous = orch._client.token
        token = token or previous or secrets.token_urlsafe(32)
        scheme = "https" if gw.ssl_certfile else "http"
        host = "127.0.0.1" if gw.host in ("0.0.0.0", "", "::") else gw.host
        local_url = f"{scheme}://{host}:{orch.ports['http']}"
        orch.set_token(token)
        try:
            _wait_for_auth(local_url, token)
            url = made.open(local_url)
            grpc_url = cast(GrpcProvider, made).open_grpc(f"{host}:{orch.ports['grpc']}") if grpc else None
        except BaseException:
            with contextlib.suppress(Exception):
                made.close()
            with contextlib.suppress(Exception):
                orch.set_token(previous)
            raise
        tunnel = Tunnel(url=url, token=token, provider=made.name, local_url=local_url, grpc_url=grpc_url,
                        pid=made.pid)
        orch._tunnel = _Exposure(tunnel, made, previous)  # Orchestration._teardown unexposes it
        return tunnel


def unexpose(orch: Any) -> None:
    """Close the public URL, then restore the gateway's previous token; harmless when not exposed."""
    with orch._lock:
        exposure = orch.__dict__.pop("_tunnel", None)
        if not isinstance(exposure, _Exposure):
            return
        exposure.provider.close()
        from orchestra_nb.orchestration.base import State

        if orch.state is State.READY:  # while closing, the gateway is going away anyway
            orch.set_token(exposure.previous_token)


def _status_code(url: str, token: str | None) -> int:
    request = urllib.request.Request(f"{url}/status")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = None
    if url.startswith("https"):  # our own gateway's port, just read from the supervisor
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _wait_for_auth(local_url: str, token: str) -> None:
    deadline = time.monotonic() + AUTH_SWITCH_TIMEOUT
    while True:
        if _status_code(local_url, None) == 401 and _status_code(local_url, token) == 200:
            return
        if time.monotonic() > deadline:
            raise TransportError(f"the gateway at {local_url} did not switch to token auth within "
                                 f"{AUTH_SWITCH_TIMEOUT:.0f} s; nothing was exposed")
        time.sleep(0.02)
