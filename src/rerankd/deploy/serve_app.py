"""The Ray Serve application builder that a KubeRay `RayService` names in its `serveConfigV2`.

`rerankd deploy kuberay` writes `import_path: rerankd.deploy.serve_app:build` and, as the application's `args`,
the settings that differ from the defaults plus the GPUs the cluster will have, so the cluster builds exactly
the application that `rerankd serve --replicas/--autoscale` builds from the same settings (`fleet.ray_app`).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from rerankd.config import Settings


def build(args: dict[str, Any]) -> Application:
    """Serve calls this with the application's `args`: {"settings": {...}, "cluster_gpus": N}."""
    from rerankd.fleet.ray_app import build_app

    settings = Settings.model_validate(args.get("settings") or {})
    return build_app(settings, cluster_gpus=float(args.get("cluster_gpus", 0)))
