"""vmctl's Hyper-V driver ``hyperv://``: Hyper-V's WMI v2 provider over WS-Management
(WinRM), through pypsrp's WS-Man client, without PowerShell.

    import vmctl
    with vmctl.connect("hyperv://Administrator@hv1.example.com", password=...,
                       cafile="winrm-ca.pem") as hv:
        ...

URIs, trust and what is supported: docs/hyperv.md. The module imports without pypsrp;
opening a connection without it raises DriverError naming ``pip install 'vmctl[hyperv]'``.
"""

from ._driver import HyperVDriver

__all__ = ["HyperVDriver"]
