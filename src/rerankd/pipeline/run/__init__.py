"""The request runner, as steps with one job each, run in this order by `runner.Runner`:

plan (`plan.py`) -> first stage (`first_stage.py`) -> score (`score.py`, deadline slicing included) -> int8-rescore's
head (`head.py`) -> rank and fuse (`rank.py`) -> describe (`describe.py`, the answer's results and meta).
`options.py` holds what a run is given and what it returns.
"""
