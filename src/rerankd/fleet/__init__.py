"""Scale-out on Ray Serve: model replicas behind a work-aware router, with an autoscaling policy.

`ray_app` builds the Serve application from the `ingress` and `model_replica` deployments, `router` and
`autoscale` hold the policies (pure functions plus thin Ray wrappers), `service` is the ingress's `RerankService`,
`replica` a replica's accounting, `launch` starts it all.
"""
