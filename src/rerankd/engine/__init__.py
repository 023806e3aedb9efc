"""The engine: tokenization (`tokenize`), the batching queue (`scheduler`) and the model (`engine`), behind async
calls; `registry` maps request model names to engines.

Import the submodules directly: this file imports nothing, so the queue's light types (`queue_stats.QueueStats`) do
not load the model stack.
"""
