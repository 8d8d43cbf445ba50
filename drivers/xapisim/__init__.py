"""xapisim: a XenAPI (xapi) server simulator for testing XenAPI clients.

Speaks XML-RPC over HTTP(S) to the unmodified XenAPI Python SDK, following the data model,
messages, power-state rules and error codes of the xapi-project/xen-api sources. See
``docs/xapisim.md``.

    with xapisim.serve(hosts=2, vms=4, password="secret") as server:
        session = XenAPI.Session(server.url, transport=...)
"""

from .model import Config, Fault
from .server import SimServer, serve, thumbprint

__all__ = ["Config", "Fault", "SimServer", "serve", "thumbprint"]
