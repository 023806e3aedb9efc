"""Kubernetes manifests generated from rerankd's own `Settings`, so that flags and manifests cannot drift.

`rerankd deploy kuberay [settings flags]` prints a KubeRay `RayService`: a head group (GCS, Serve controller, a
proxy; no model replicas), a CPU worker group and a GPU worker group. Its `serveConfigV2` names the application
builder `rerankd.deploy.serve_app:build` with the settings as the application's args, so the cluster builds the
same Serve application as `rerankd serve --replicas/--autoscale` (`fleet.ray_app.build_app`), and the pods are
sized by the same `replica_plan`.

`rerankd deploy kubernetes [settings flags]` prints plain manifests for the single-process server: a Deployment
(probes, preStop drain, resources, `RERANKD_*` environment), a Service, a PodDisruptionBudget and, with
`--autoscale min:max`, a HorizontalPodAutoscaler on CPU utilisation. There the fleet settings size Kubernetes'
own scaling: `replicas` is the Deployment's pod count, `autoscale` the HPA's bounds, and each pod runs one
engine (the pods' own settings have `replicas=0`, `autoscale=""`).

In both, what a pod needs differs from the command line in a few documented ways (`deployed_settings`): it
listens on 0.0.0.0, caches under the `/data` volume, and reads API keys from a mounted Secret. API keys are
never written into a manifest: `--api-keys` is refused; `--api-keys-secret NAME` mounts the Secret's key
`api-keys` (one key per line) and sets `api_keys_file` to it.

Nothing here has run on a cluster: the tests validate the manifests against the Kubernetes JSON schemas
(kubernetes-validate) and the RayService CRD's OpenAPI schema (deploy/schemas/), and check the values.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import yaml

from rerankd.config import ENV_PREFIX, Settings

Kind = Literal["kuberay", "kubernetes"]

DATA_DIR = "/data"  # the images' volume (HF_HOME=/data/hf)
CACHE_DIR = "/data/rerankd"  # the images' RERANKD_CACHE_DIR
API_KEYS_DIR = "/var/run/secrets/rerankd"
API_KEYS_KEY = "api-keys"  # the key of the Secret that holds the keys, one per line
API_KEYS_FILE = f"{API_KEYS_DIR}/{API_KEYS_KEY}"
USER_ID = 10001  # the images' user

# Shutdown: preStop sleeps DRAIN_SECONDS so that endpoints and load balancers stop sending new requests, then
# SIGTERM makes uvicorn stop accepting and finish in-flight requests for up to UVICORN_GRACEFUL_SECONDS
# (api/server.py: timeout_graceful_shutdown); the kubelet kills the pod only after the grace period.
DRAIN_SECONDS = 10
UVICORN_GRACEFUL_SECONDS = 30
GRACE_PERIOD_SECONDS = DRAIN_SECONDS + UVICORN_GRACEFUL_SECONDS + 5

# Start-up: cold starts measure 30-60 s (model load, export on first use, warm-up); the startup probe allows
# STARTUP_SECONDS + warmup_seconds before the kubelet restarts the container, then liveness takes over.
STARTUP_SECONDS = 180
PROBE_PERIOD_SECONDS = 5
DEFAULT_PODS = 2  # without --replicas/--autoscale: two pods, so a drain or a rollout never empties the Service

HEAD_CPUS, HEAD_MEMORY = "2", "4Gi"  # GCS, dashboard, Serve controller, a proxy and the ingress (0 CPUs)
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Fields the images set in their environment: always written, so the manifest alone decides them.
ALWAYS_WRITTEN = ("host", "port", "cache_dir", "device")


@dataclass(frozen=True)
class Target:
    """What the settings do not say: names, images and pod sizes."""

    image: str
    gpu_image: str = ""  # defaults to `image`
    name: str = "rerankd"
    namespace: str = ""
    memory_gib: float = 4.0  # per model replica (engine)
    data_gib: float = 20.0  # the /data emptyDir (model downloads and exports)
    api_keys_secret: str = ""
    ray_version: str = ""  # defaults to the installed Ray's

    @property
    def image_for_gpu(self) -> str:
        return self.gpu_image or self.image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`rerankd deploy KIND` arguments besides the settings flags."""
    parser.add_argument("kind", choices=["kuberay", "kubernetes"], help="KubeRay RayService, or plain manifests")
    parser.add_argument("--image", required=True, help="container image with rerankd (deploy/Dockerfile)")
    parser.add_argument("--gpu-image", default="", help="image for GPU pods (deploy/Dockerfile.cuda); default --image")
    parser.add_argument("--name", default="rerankd", help="name of the objects (default rerankd)")
    parser.add_argument("--namespace", default="", help="namespace of the objects (default: none written)")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="memory per model replica in GiB (default 4)")
    parser.add_argument("--data-gib", type=float, default=20.0, help="size of the /data cache volume in GiB")
    parser.add_argument(
        "--api-keys-secret", default="", help="Secret whose key `api-keys` holds the API keys, one per line"
    )
    parser.add_argument("--ray-version", default="", help="Ray version of the image (default: the installed one)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    target = Target(
        image=args.image,
        gpu_image=args.gpu_image,
        name=args.name,
        namespace=args.namespace,
        memory_gib=args.memory_gib,
        data_gib=args.data_gib,
        api_keys_secret=args.api_keys_secret,
        ray_version=args.ray_version,
    )
    sys.stdout.write(render(args.kind, settings, target))
    return 0


def render(kind: Kind, settings: Settings, target: Target) -> str:
    """The manifests as one YAML stream."""
    manifests = kuberay_manifests(settings, target) if kind == "kuberay" else kubernetes_manifests(settings, target)
    header = (
        f"# Generated by `rerankd deploy {kind}` from rerankd's settings. Validated against the Kubernetes and\n"
        "# KubeRay schemas; not run on a cluster by rerankd's tests (docs/fleet.md, Kubernetes).\n"
    )
    return header + yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, explicit_start=True)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the Serve config) as literal blocks; no anchors and aliases (kubectl-friendly)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


# Settings ------------------------------------------------------------------------------------------------------


def deployed_settings(settings: Settings, target: Target, kind: Kind) -> Settings:
    """The settings a pod runs with: `settings` with host 0.0.0.0 (if it was loopback), cache_dir on the /data
    volume, api_keys_file from the mounted Secret, and (plain Kubernetes) no Ray fleet inside the pod."""
    if settings.api_keys:
        raise ValueError(
            "api_keys would be written into the manifest in clear text: put them in a Secret (key `api-keys`, one "
            "per line) and pass --api-keys-secret NAME"
        )
    if settings.api_keys_file is not None and not target.api_keys_secret:
        raise ValueError("api_keys_file names a file on this machine: pass --api-keys-secret NAME instead")
    if settings.ray_address:
        raise ValueError("ray_address: the manifests make their own cluster (kuberay) or none (kubernetes)")
    if any("," in name for name in settings.model):
        raise ValueError("model: a name with a comma cannot be passed in the environment")
    updates: dict[str, Any] = {"cache_dir": CACHE_DIR}
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        updates["host"] = "0.0.0.0"
    if target.api_keys_secret:
        updates["api_keys_file"] = API_KEYS_FILE
    if kind == "kubernetes":
        updates.update(replicas=0, autoscale="")
    return Settings.model_validate({**settings.model_dump(), **updates})


def changed_settings(settings: Settings) -> dict[str, Any]:
    """JSON values of the settings that differ from the defaults, plus those the images set (ALWAYS_WRITTEN)."""
    defaults = Settings().model_dump(mode="json")
    return {
        name: value
        for name, value in settings.model_dump(mode="json").items()
        if name in ALWAYS_WRITTEN or value != defaults[name]
    }


def _env_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_env(settings: Settings) -> list[dict[str, str]]:
    """`RERANKD_*` variables that `Settings.load` turns back into `settings` (in an otherwise empty environment)."""
    return [
        {"name": f"{ENV_PREFIX}{name.upper()}", "value": _env_text(value)}
        for name, value in changed_settings(settings).items()
    ]


def on_gpu(settings: Settings) -> bool:
    """Model replicas on GPUs: `device cuda`, or `auto` with `replica_gpus` (a pod's hardware is chosen by the
    manifest, not discovered, so `auto` alone means CPU)."""
    return settings.device == "cuda" or (settings.device == "auto" and settings.replica_gpus > 0)


def _replica_range(settings: Settings) -> tuple[int, int]:
    if not settings.autoscale:
        return (max(1, settings.replicas),) * 2
    from rerankd.fleet.autoscale import AutoscaleConfig

    config = AutoscaleConfig.from_settings(settings)
    if not 1 <= config.min_replicas <= config.max_replicas:
        raise ValueError(f"autoscale: need 1 <= min <= max, got {settings.autoscale}")
    return config.min_replicas, config.max_replicas


# Pieces --------------------------------------------------------------------------------------------------------


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"


def _memory(gib: float) -> str:
    return f"{int(gib)}Gi" if float(gib).is_integer() else f"{math.ceil(gib * 1024)}Mi"


def _labels(target: Target, component: str) -> dict[str, str]:
    return {**_selector(target), "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "rerankd"}


def _selector(target: Target) -> dict[str, str]:
    return {"app.kubernetes.io/name": "rerankd", "app.kubernetes.io/instance": target.name}


def _metadata(target: Target, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if target.namespace:
        meta["namespace"] = target.namespace
    meta["labels"] = _labels(target, component)
    return meta


def _volumes(target: Target) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the /data cache, and the API keys Secret when there is one."""
    volumes: list[dict[str, Any]] = [{"name": "data", "emptyDir": {"sizeLimit": _memory(target.data_gib)}}]
    mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": DATA_DIR}]
    if target.api_keys_secret:
        volumes.append(
            {
                "name": "api-keys",
                "secret": {
                    "secretName": target.api_keys_secret,
                    "items": [{"key": API_KEYS_KEY, "path": API_KEYS_KEY}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    return volumes, mounts


def _resources(cpus: float, memory_gib: float, gpus: int = 0) -> dict[str, Any]:
    """Requests = limits: a guaranteed pod, whose CPU limit is also the cores rerankd sizes its threads by."""
    limits: dict[str, Any] = {"cpu": _cpu(cpus), "memory": _memory(memory_gib)}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(limits), "limits": limits}


def _http_probe(path: str, port: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID, "fsGroup": USER_ID}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


# Plain Kubernetes: the single-process server ---------------------------------------------------------------------


def kubernetes_manifests(settings: Settings, target: Target) -> list[dict[str, Any]]:
    """Deployment, Service, PodDisruptionBudget and (with `autoscale`) a HorizontalPodAutoscaler."""
    pod_settings = deployed_settings(settings, target, "kubernetes")
    gpu = on_gpu(settings)
    gpus = math.ceil(settings.replica_gpus or 1) if gpu else 0
    cpus = settings.threads or settings.replica_cpus
    volumes, mounts = _volumes(target)
    container = {
        "name": "rerankd",
        "image": target.image_for_gpu if gpu else target.image,
        "command": ["rerankd", "serve"],
        "ports": [{"name": "http", "containerPort": pod_settings.port, "protocol": "TCP"}],
        "env": settings_env(pod_settings),
        "resources": _resources(cpus, target.memory_gib, gpus),
        "startupProbe": _http_probe(
            "/ready",
            "http",
            PROBE_PERIOD_SECONDS,
            math.ceil((STARTUP_SECONDS + pod_settings.warmup_seconds) / PROBE_PERIOD_SECONDS),
        ),
        # /ready is also 503 while admission is full (max_queue_seconds): the pod leaves the endpoints and
        # traffic goes to the others until its queue drains.
        "readinessProbe": _http_probe("/ready", "http", PROBE_PERIOD_SECONDS, 2),
        "livenessProbe": _http_probe("/health", "http", 10, 3, timeout=5),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(DRAIN_SECONDS)]}}},
        "volumeMounts": mounts,
        "securityContext": _CONTAINER_SECURITY,
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": GRACE_PERIOD_SECONDS,
        "securityContext": _POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": _selector(target)},
            }
        ],
    }
    if gpu:
        pod["tolerations"] = [GPU_TOLERATION]
    spec: dict[str, Any] = {}
    if not settings.autoscale:  # with an HPA, the HPA owns the pod count
        spec["replicas"] = settings.replicas or DEFAULT_PODS
    spec |= {
        "selector": {"matchLabels": _selector(target)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": _labels(target, "server"),
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(pod_settings.port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod,
        },
    }
    manifests: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(target, target.name, "server"),
            "spec": spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(target, target.name, "server"),
            "spec": {
                "type": "ClusterIP",
                "selector": _selector(target),
                "ports": [{"name": "http", "port": pod_settings.port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(target, target.name, "server"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(target)}},
        },
    ]
    if settings.autoscale:
        manifests.append(_hpa(settings, target))
    return manifests


def _hpa(settings: Settings, target: Target) -> dict[str, Any]:
    """On CPU utilisation, aiming at `autoscale_target_utilisation`, with the fleet autoscaler's delays."""
    low, high = _replica_range(settings)
    step = min(1800, max(1, round(settings.autoscale_downscale_step_seconds)))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(target, target.name, "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target.name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": round(settings.autoscale_target_utilisation * 100),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": min(3600, round(settings.autoscale_upscale_seconds)),
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": min(3600, round(settings.autoscale_downscale_seconds)),
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": step}],
                },
            },
        },
    }


# KubeRay: the fleet ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayLayout:
    """Model replicas and the worker pods that hold them."""

    gpu: bool
    replicas: tuple[int, int]  # min, max model replicas
    per_pod: int  # model replicas per worker pod
    pod_cpus: int
    pod_gpus: int
    cluster_gpus: float  # what the application builder is told (fleet.ray_app.replica_plan)

    @property
    def pods(self) -> tuple[int, int]:
        return math.ceil(self.replicas[0] / self.per_pod), math.ceil(self.replicas[1] / self.per_pod)


def ray_layout(settings: Settings) -> RayLayout:
    """One CPU model replica per CPU worker pod; as many GPU replicas per GPU pod as share its GPUs."""
    from rerankd.fleet.ray_app import check_settings, replica_plan

    check_settings(settings)
    replicas = _replica_range(settings)
    gpu = on_gpu(settings)
    if gpu:
        gpus_each = settings.replica_gpus or 1.0
        pod_gpus = math.ceil(gpus_each)
        per_pod = max(1, math.floor(pod_gpus / gpus_each + 1e-9))
        cluster_gpus = float(math.ceil(replicas[1] / per_pod) * pod_gpus)
    else:
        pod_gpus, per_pod, cluster_gpus = 0, 1, 0.0
    plan = replica_plan(settings, cluster_gpus)
    assert (plan.num_gpus > 0) == gpu, "replica_plan and on_gpu disagree"
    return RayLayout(gpu, replicas, per_pod, max(1, math.ceil(plan.num_cpus * per_pod)), pod_gpus, cluster_gpus)


def serve_config(settings: Settings, layout: RayLayout) -> dict[str, Any]:
    """Ray Serve's config file (`serveConfigV2`): the application of `fleet.ray_app`, built from the settings."""
    from rerankd.fleet.ray_app import APP_NAME

    return {
        "proxy_location": "EveryNode",  # a proxy on every node: any pod can take client traffic
        "http_options": {"host": "0.0.0.0", "port": settings.port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "rerankd.deploy.serve_app:build",
                "args": {"settings": changed_settings(settings), "cluster_gpus": layout.cluster_gpus},
                "logging_config": {"log_level": settings.log_level.upper(), "enable_access_log": False},
            }
        ],
    }


def _ray_version(target: Target) -> str:
    if target.ray_version:
        return target.ray_version
    try:
        return version("ray")
    except PackageNotFoundError:  # pragma: no cover - ray is a dependency
        raise ValueError("--ray-version: Ray is not installed here, say which version the image has") from None


def _ray_pod(
    target: Target, settings: Settings, *, head: bool, cpus: float, memory: str, gpus: int = 0
) -> dict[str, Any]:
    volumes, mounts = _volumes(target)
    ports = [{"name": name, "containerPort": port} for name, port in RAY_PORTS.items()] if head else []
    ports.append({"name": "serve", "containerPort": settings.port})  # KubeRay's serve Service targets this name
    limits: dict[str, Any] = {"cpu": _cpu(cpus), "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": "ray-head" if head else "ray-worker",
        "image": target.image_for_gpu if gpus else target.image,
        "ports": ports,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": mounts,
        "securityContext": _CONTAINER_SECURITY,
    }
    if not head:
        # The node's Serve proxy forwards /ready to the ingress: 200 while a model replica runs. (KubeRay checks
        # the head's proxy itself and adds liveness probes on the raylet; a probe given here replaces its own.)
        container["readinessProbe"] = {
            **_http_probe("/ready", "serve", PROBE_PERIOD_SECONDS, 2),
            "initialDelaySeconds": 10,
        }
    spec: dict[str, Any] = {"securityContext": _POD_SECURITY, "containers": [container], "volumes": volumes}
    if gpus:
        spec["tolerations"] = [GPU_TOLERATION]
    return {"metadata": {"labels": _labels(target, "ray-head" if head else "ray-worker")}, "spec": spec}


def kuberay_manifests(settings: Settings, target: Target) -> list[dict[str, Any]]:
    """One RayService: head (no model replicas), a CPU and a GPU worker group; the group the model replicas do
    not use is kept at zero pods."""
    cluster_settings = deployed_settings(settings, target, "kuberay")
    layout = ray_layout(cluster_settings)
    low, high = layout.pods

    def group(name: str, used: bool) -> dict[str, Any]:
        # The group the model replicas do not use keeps the shape of one replica's pod, at zero pods.
        gpus = (layout.pod_gpus or 1) if name == "gpu" else 0
        per_pod = layout.per_pod if used else 1
        cpus = layout.pod_cpus if used else max(1, math.ceil(cluster_settings.replica_cpus))
        memory = _memory(target.memory_gib * per_pod)
        return {
            "groupName": name,
            "replicas": low if used else 0,
            "minReplicas": low if used else 0,
            "maxReplicas": high if used else 0,
            "rayStartParams": {},
            "template": _ray_pod(target, cluster_settings, head=False, cpus=cpus, memory=memory, gpus=gpus),
        }

    cluster: dict[str, Any] = {
        "rayVersion": _ray_version(target),
        "enableInTreeAutoscaling": bool(cluster_settings.autoscale),
        "authOptions": {"mode": "token"},  # Ray's token authentication; KubeRay makes and mounts the token
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _ray_pod(target, cluster_settings, head=True, cpus=float(HEAD_CPUS), memory=HEAD_MEMORY),
        },
        "workerGroupSpecs": [group("cpu", not layout.gpu), group("gpu", layout.gpu)],
    }
    if cluster_settings.autoscale:
        cluster["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": round(cluster_settings.autoscale_downscale_seconds),
        }
    config = yaml.dump(serve_config(cluster_settings, layout), Dumper=_Dumper, sort_keys=False)
    return [
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": _metadata(target, target.name, "fleet"),
            "spec": {"serveConfigV2": config, "rayClusterConfig": cluster},
        }
    ]
