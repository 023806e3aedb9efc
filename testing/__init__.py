"""Tooling for tests, benchmarks and simulations, kept out of the installed package: production code never imports it
(an import-linter contract in pyproject.toml).

`costmodel` is a stand-in replica that costs time, not compute; `simfleet` deploys the fleet's Serve application
with such replicas; `netns` runs Ray in a loopback-only network namespace; `processes` finds a fleet's processes;
`cluster` builds a multi-node Ray cluster from network namespaces.

Importable from the repository root: pytest puts it on `sys.path` (`pythonpath` in pyproject.toml), benchmarks
insert it themselves, and Ray adds the driver's working directory to its workers' path, so the cost-model replicas
unpickle there when the driver runs from the root (as `make test` and the benchmarks do).
"""
