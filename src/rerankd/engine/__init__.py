"""The engine: tokenization, the batching queue and the model, behind async calls."""

from rerankd.engine.engine import Calibration, Engine, Prepared
from rerankd.engine.registry import ModelRegistry
from rerankd.engine.scheduler import QueueStats, Scheduler
from rerankd.engine.tokenize import Tokens

__all__ = ["Calibration", "Engine", "ModelRegistry", "Prepared", "QueueStats", "Scheduler", "Tokens"]
