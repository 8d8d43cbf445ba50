"""Bulk reads over xapi's JSON-RPC endpoint (``/jsonrpc``, XenServer 7+ / XCP-ng 8+).

``VM.get_all_records`` of 2000 VMs is 18 MB of XML-RPC that ``xmlrpc.client`` takes ~3 s to
unmarshal; the same records as JSON are ~5.6 MB and ``json.loads`` reads them in ~0.2 s.
The XenAPI Python SDK speaks only XML-RPC, so the bulk reads listed in ``METHODS`` are sent
here as JSON-RPC 2.0 requests (``{"jsonrpc": "2.0", "method", "params": [session, ...],
"id"}``, as xapi's ``api_server.ml`` reads them), on the calling thread's own transport
(same kept-alive connection, TLS context, pin, socket timeout and "was it sent?" marking as
the XML-RPC calls).

The endpoint is probed once per connection, by the first such call: a reply that is not a
JSON-RPC response (an older xapi answers another status or XML) marks it absent, logged
once, and that call and all later ones go over XML-RPC. Replies are turned into the
XML-RPC shape (``{"Status": "Success", "Value": ...}`` or ``{"Status": "Failure",
"ErrorDescription": [code, *params]}``) so that the driver reads both alike. Only methods
whose values read the same in both encodings are listed (JSON has numbers where XML-RPC has
int64 strings: the driver converts with ``int()`` either way; no dates are read from them).

``VMCTL_XEN_JSONRPC=0`` in the environment turns it off (for comparisons).
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
from typing import Any

from ._transport import Transport

log = logging.getLogger("vmctl.xen")

#: Calls sent over JSON-RPC when the host offers it.
METHODS = frozenset({"VM.get_all_records"})
PATH = "/jsonrpc"


class NotOffered(Exception):
    """The host has no JSON-RPC endpoint (this call goes over XML-RPC)."""


def enabled_by_default() -> bool:
    return os.environ.get("VMCTL_XEN_JSONRPC", "1") != "0"


class JsonRpc:
    """The JSON-RPC side of one connection: whether the host offers it, and the calls."""

    def __init__(self, where: str) -> None:
        self.where = where
        #: None until probed; then whether /jsonrpc answers JSON-RPC.
        self.offered: bool | None = None if enabled_by_default() else False
        self._ids = itertools.count(1)

    def wanted(self, method: str) -> bool:
        return self.offered is not False and method in METHODS

    def call(self, transport: Transport, host: Any, method: str, params: list[Any]) -> Any:
        """The reply in XML-RPC's shape; NotOffered when the host has no JSON-RPC (then
        nothing was done: the caller sends the call over XML-RPC)."""
        ident = next(self._ids)
        body = json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params, "id": ident},
            separators=(",", ":"),
        ).encode("utf-8")
        conn = transport.make_connection(host)
        try:
            conn.request(
                "POST",
                PATH,
                body,
                {"Content-Type": "application/json", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            transport.close()
            raise
        if resp.will_close:
            transport.close()
        try:
            reply = self._reply(resp, data, ident)
        except NotOffered as exc:
            if self.offered is None:
                log.info("%s: no JSON-RPC (%s); XML-RPC for every call", self.where, exc)
            self.offered = False
            raise
        self.offered = True
        return reply

    @staticmethod
    def _reply(resp: http.client.HTTPResponse, data: bytes, ident: int) -> dict[str, Any]:
        kind = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if resp.status != 200 or kind not in ("application/json", "text/json", ""):
            raise NotOffered(f"{PATH} answered HTTP {resp.status} {kind or '(no type)'}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotOffered(f"{PATH} did not answer JSON ({exc.__class__.__name__})") from None
        if not isinstance(doc, dict) or doc.get("id") != ident:
            raise NotOffered(f"{PATH} did not answer a JSON-RPC response to this request")
        error = doc.get("error")
        if error is None:
            if "result" not in doc:
                raise NotOffered(f"{PATH} answered neither result nor error")
            return {"Status": "Success", "Value": doc["result"]}
        if isinstance(error, dict):  # 2.0: {"code", "message": xapi's code, "data": params}
            data_ = error.get("data")
            params = data_ if isinstance(data_, list) else ([] if data_ is None else [data_])
            desc = [str(error.get("message") or "UNKNOWN"), *(str(p) for p in params)]
        elif isinstance(error, list):  # 1.0: [code, *params]
            desc = [str(p) for p in error] or ["UNKNOWN"]
        else:
            desc = [str(error)]
        return {"Status": "Failure", "ErrorDescription": desc}
