"""Deployment manifests generated from `Settings`: `rerankd deploy kuberay|kubernetes` (see `kubernetes.py`)."""
