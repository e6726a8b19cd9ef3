"""medge.edge.execution: how ``Model.predict`` runs its inputs: in turn, in one batch, or pipelined on every core.

The modules divide the work:

- ``run``: the three strategies over two shared steps (prepare an input, finish a batch), and the pool of nets;
- ``pipeline``: the pipelined predict: threads that each read, preprocess or infer, whichever is next, in order;
- ``budget``: the thread budget of the pipeline (threads, passes at once, batch size) and why, from measured costs.

Usage:
    from medge.edge.execution import plan_budget
    print(plan_budget(cores=8, batch_size=8, inputs=100))   # threads, passes at once, batch size, and why

The names below are re-exported for users; modules of ``medge`` import from the defining module.
"""
from medge.edge.execution.budget import StageCosts, ThreadBudget, plan_budget
from medge.edge.execution.pipeline import Pipeline
from medge.edge.execution.run import NetPool, RunOptions, run_predictions

__all__ = ["NetPool", "Pipeline", "RunOptions", "StageCosts", "ThreadBudget", "plan_budget", "run_predictions"]
