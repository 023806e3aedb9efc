"""The request runner, as steps with one job each. `runner.Runner.run` calls them in this order:

plan (`plan.py`) -> first stage (`first_stage.py`) -> score (`score.py`, deadline slicing included) -> rank and fuse
(`rank.py`) -> int8-rescore's head scored again (`head.py`) -> final scores (`rank.finalise`); the service then
describes the outcome (`describe.py`: the answer's results and meta). `options.py` holds what a run is given and
what it returns.
"""
