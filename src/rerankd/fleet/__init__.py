"""Scale-out on Ray Serve: model replicas behind a work-aware router, with an autoscaling policy (docs/fleet.md)."""
