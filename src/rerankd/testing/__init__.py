"""Tooling for tests, benchmarks and simulations; production code never imports it (an import-linter contract).

`costmodel` is a stand-in replica that costs time, not compute; `simfleet` deploys the fleet's Serve application
with such replicas; `netns` runs Ray in a loopback-only network namespace; `processes` finds a fleet's processes.
"""
