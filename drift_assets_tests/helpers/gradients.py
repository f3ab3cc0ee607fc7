"""Exact per-example gradients (torch.func), the oracle of the projected ones."""

import torch
from torch.func import functional_call, grad


def exact_per_example_gradients(model, batch, names, reduction="sum"):
    """∇ log π(y_i|x_i) of each example with torch.func.grad, one unpadded example at a time
    (independent of the hooks, the batching and the padding)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logprob(p, input_ids, response_mask):
        logits = functional_call(model, p, (input_ids.unsqueeze(0),)).logits[0, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, input_ids[1:].unsqueeze(-1)).squeeze(-1)
        total = (lp * response_mask[:-1]).sum()
        return total if reduction == "sum" else total / response_mask[:-1].sum()

    rows = []
    for i in range(batch.input_ids.shape[0]):
        length = int(batch.attention_mask[i].sum())
        g = grad(logprob)(params, batch.input_ids[i, :length], batch.response_mask[i, :length].float())
        rows.append(torch.cat([g[f"{name}.weight"].reshape(-1) for name in names]))
    return torch.stack(rows)
