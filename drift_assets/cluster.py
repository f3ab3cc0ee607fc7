"""The code location on a Kubernetes cluster (deploy/k8s): the same definitions, each step in a pod of
its own (dagster-k8s's ``k8s_job_executor``), so that a step that runs the model asks for one GPU
through its op tags and the others run on CPU nodes."""

from dagster_k8s import k8s_job_executor

from drift_assets.definitions import build_definitions
from drift_assets.settings import load_settings

defs = build_definitions(load_settings(), executor=k8s_job_executor)
