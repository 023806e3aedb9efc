"""The HTTP API: validation, auth, error mapping, and the Cohere, Jina and TEI request shapes."""

from rerankd.api.app import create_app

__all__ = ["create_app"]
