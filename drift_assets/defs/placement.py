"""What every step that runs the model declares about where it runs.

The "gpu" concurrency pool: the instance lets as many such runs (or steps) proceed at once as it
has devices (deploy/dagster.yaml, deploy/k8s/dagster.yaml). The ``dagster-k8s/config`` op tag:
under the cluster's per-step executor (``drift_assets.cluster``) the step's pod asks for one GPU;
every other executor ignores it.
"""

import json

GPU_POOL = "gpu"
GPU_OP_TAGS = {"dagster-k8s/config": json.dumps({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}})}
GPU_STEP = {"pool": GPU_POOL, "op_tags": GPU_OP_TAGS}  # an @asset's arguments
