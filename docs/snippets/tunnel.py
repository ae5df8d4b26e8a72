import httpx

from orchestra_nb import Doc, Flow

f = Flow(protocol=["grpc", "http"]).add(name="echo")
with f:
    # 'auto': Colab's proxy on Colab, jupyter-server-proxy on Binder/JupyterHub, else ngrok
    tunnel = f.expose("auto")
    print(tunnel.url)  # https://…: the public URL of the HTTP gateway
    print(tunnel.curl)  # a ready-to-paste curl line with the token

    # token auth is on from now on, on every front door, local ones included
    http = f"http://127.0.0.1:{f.ports['http']}"
    print(httpx.get(f"{http}/status").status_code)  # 401
    headers = {"Authorization": f"Bearer {tunnel.token}"}
    print(httpx.post(f"{http}/post", json={"on": "/", "docs": [{"text": "hi"}]}, headers=headers).status_code)  # 200

    f.unexpose()  # closes the public URL, then restores the token the gateway had before
    print(f.post("/", [Doc(text="no token needed again")]).texts)
