"""The kit's tests, one module per area. Each test names its SPEC.md clause(s).

A third-party driver's test suite can run them with ``pytest -p vmctl_conformance.plugin
--pyargs vmctl_conformance.suite --vmctl-uri yours://``.
"""
