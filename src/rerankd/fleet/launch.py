"""Starting and stopping a fleet: a local Ray instance bound to 127.0.0.1 (or a cluster to join), Serve's HTTP
proxy on `host:port`, and the application of `ray_app`. Used by `rerankd serve --replicas/--autoscale`, the
tests and the benchmarks."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from rerankd.config import Settings
from rerankd.errors import RerankdError

AppBuilder = Callable[..., Any]  # (settings, *, cluster_gpus) -> a Serve application, as ray_app.build_app

log = logging.getLogger(__name__)


class Fleet:
    """One Serve application on Ray; `start()` returns once every replica is up, `stop()` undoes what it began.
    `app` builds the application (default `ray_app.build_app`; simulations pass `testing/simfleet.py`'s)."""

    def __init__(self, settings: Settings, *, app: AppBuilder | None = None, num_cpus: float | None = None) -> None:
        self.settings = settings
        self.app = app
        self.num_cpus = num_cpus
        self._started_ray = False

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> Fleet:
        self.connect()
        self.deploy(self.settings)
        return self

    def connect(self) -> None:
        """Start (or join) Ray and Serve's HTTP proxy, without the application."""
        import ray
        from ray import serve

        if self.settings.ray_address:
            try:
                ray.init(address=self.settings.ray_address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError) as exc:
                raise RerankdError(
                    f"ray_address: cannot join the Ray cluster at {self.settings.ray_address} ({exc}). With token "
                    "authentication on (Ray's default), export RAY_AUTH_MODE=token and the cluster's token."
                ) from exc
        else:
            # Loopback only: Ray's own ports still listen on every interface; see docs/fleet.md on firewalling.
            # address="local": always a fresh instance; without it Ray would join any cluster `ray start` left
            # running on this machine, quietly, and refuse `num_cpus`.
            ray.init(
                address="local",
                num_cpus=self.num_cpus,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
            self._started_ray = True
        print("rerankd: Ray started", file=sys.stderr, flush=True)
        serve.start(http_options={"host": self.settings.host, "port": self.settings.port})

    def deploy(self, settings: Settings) -> None:
        """(Re)deploy the application, e.g. with another routing policy; waits until its replicas run."""
        import ray
        from ray import serve
        from ray.serve.schema import LoggingConfig

        from rerankd.fleet.ray_app import APP_NAME, build_app

        self.settings = settings
        app = (self.app or build_app)(settings, cluster_gpus=ray.cluster_resources().get("GPU", 0.0))
        logging_config = LoggingConfig(log_level=settings.log_level.upper(), enable_access_log=False)
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=logging_config)

    def replica_states(self) -> dict[str, int]:
        """Model replicas by state, as Ray Serve counts them."""
        from rerankd.fleet.ray_app import APP_NAME, MODEL_DEPLOYMENT
        from rerankd.fleet.service import deployment_status

        return deployment_status(APP_NAME, MODEL_DEPLOYMENT)[1]

    def stop(self) -> None:
        import ray
        from ray import serve

        from rerankd.fleet.ray_app import APP_NAME

        if not ray.is_initialized():
            return
        if self._started_ray:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)  # leave the joined cluster as it was
        ray.shutdown()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_fleet(settings: Settings) -> int:
    """`rerankd serve` with replicas: run until SIGINT or SIGTERM, then take everything down."""
    from rerankd.fleet.ray_app import check_settings

    check_settings(settings)
    deployed, stop = threading.Event(), threading.Event()
    fleet = Fleet(settings)

    def on_signal(*_: Any) -> None:
        if not deployed.is_set():
            raise KeyboardInterrupt  # abandon the deploy; `finally` cleans up
        stop.set()

    try:
        fleet.connect()
        # After ray.init, which installs its own SIGTERM handler (one that aborts the process).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        fleet.deploy(settings)
        deployed.set()
        shape = f"autoscaling {settings.autoscale}" if settings.autoscale else f"{max(1, settings.replicas)} replicas"
        print(f"rerankd: fleet of {shape} ({settings.routing} routing) on {fleet.url}", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        fleet.stop()
    return 0
