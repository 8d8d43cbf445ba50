"""vmctl's reference driver ``sim://``: an in-process hypervisor with every capability.

The embedded default backend for the demo, the template for driver authors, and a test double
for users' own unit tests (as moto is for AWS)::

    import vmctl
    with vmctl.connect("sim://") as hv: ...

``reset_sites()`` forgets every in-process sim world (handy between unit tests).
"""

from ._driver import SimDriver
from ._site import reset_sites

__all__ = ["SimDriver", "reset_sites"]
