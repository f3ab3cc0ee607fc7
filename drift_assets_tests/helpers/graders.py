"""Custom graders that hang, return at once or use signals (a module's source, for a test to write
where it imports from), and grading inputs that name them."""

import polars as pl

SLOW_GRADERS = """
import signal
import threading

def forever(completion, reference):
    threading.Event().wait()  # never returns

def quick(completion, reference):
    return completion.endswith(reference)

def with_alarm(completion, reference):
    # math-verify's own timeout: signal.alarm, which works only on a process's main thread
    signal.signal(signal.SIGALRM, signal.getsignal(signal.SIGALRM))
    return True
"""


def grading_inputs(module: str, n_per_query: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    ids = [f"q{q}" for q in range(3) for _ in range(n_per_query)]
    rollouts = pl.DataFrame(
        {
            "rollout_id": [f"{query_id}-{i % n_per_query}" for i, query_id in enumerate(ids)],
            "query_id": ids,
            "completion": ["Answer: 2"] * len(ids),
            "model_fingerprint": ["m"] * len(ids),
        }
    )
    graders = ["numeric", f"{module}:forever", f"{module}:quick"]
    queries = pl.DataFrame({"query_id": ["q0", "q1", "q2"], "reference": ["2"] * 3, "grader": graders})
    return rollouts, queries
