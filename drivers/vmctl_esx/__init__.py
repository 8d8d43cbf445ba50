"""vmctl's VMware driver: ``esx://host`` (a standalone ESX host) and
``vcenter://host/DATACENTER/CLUSTER[/HOST]`` (a cluster or one host of a vCenter), over pyvmomi.

Importing this package does not need pyvmomi; opening a connection does
(``pip install 'vmctl[esx]'``). See docs/esx.md.
"""

from ._driver import CAPABILITIES, EsxDriver

__all__ = ["CAPABILITIES", "EsxDriver"]
