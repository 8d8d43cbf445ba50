"""hypervsim: a Hyper-V WMI (root/virtualization/v2) over WS-Management server simulator.

Answers SOAP 1.2 WS-Management requests (Get, Enumerate/Pull/Release with WQL and
association filters, Invoke of the Hyper-V V2 CIM methods) over HTTP or HTTPS with Basic or
Negotiate/NTLM authentication, as WinRM does on a Hyper-V host, for a small cluster of
simulated hosts (one endpoint each). See ``docs/hypervsim.md``.

    with hypervsim.serve(hosts=2, vms=4, password="secret") as server:
        server.urls  # ["https://127.0.0.1:PORT/wsman", ...]
"""

from .model import Config, World
from .server import SimServer, serve, thumbprint

__all__ = ["Config", "SimServer", "World", "serve", "thumbprint"]
