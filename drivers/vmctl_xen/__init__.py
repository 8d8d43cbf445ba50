"""vmctl's Xen driver ``xen://``: XenServer, XCP-ng and any xapi pool, over the XenAPI SDK.

    import vmctl
    with vmctl.connect("xen://root@pool-master", password=..., cafile="pool-ca.pem") as hv:
        ...

URIs, trust and what is supported: docs/xen.md. The module imports without the SDK; opening
a connection without it raises DriverError naming ``pip install 'vmctl[xen]'``.
"""

from ._driver import XenDriver

__all__ = ["XenDriver"]
