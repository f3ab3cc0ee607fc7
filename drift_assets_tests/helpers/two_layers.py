"""A 2-layer language model small enough to differentiate by hand, and random Adam moments for it:
the independent oracle of the LESS tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class TwoLayers(torch.nn.Module):
    """A 2-layer language model: token embedding, tanh, linear read-out."""

    def __init__(self, vocabulary: int, width: int = 3, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(vocabulary, width)
        self.out = torch.nn.Linear(width, vocabulary)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.out(torch.tanh(self.embed(input_ids))))


def hand_gradient(model: TwoLayers, prompt: list[int], response: list[int]) -> torch.Tensor:
    """The gradient of the mean negative log-likelihood of the response tokens, for one sequence."""
    ids = torch.tensor(prompt + response)
    log_probs = torch.log_softmax(model(ids[None]).logits[0], dim=-1)
    # Position t predicts token t+1; the response's tokens are predicted from positions len(prompt)-1 on.
    picked = [log_probs[t, ids[t + 1]] for t in range(len(prompt) - 1, len(ids) - 1)]
    loss = -torch.stack(picked).mean()
    gradients = torch.autograd.grad(loss, [model.embed.weight, model.out.weight, model.out.bias])
    return torch.cat([g.reshape(-1) for g in gradients]).double()


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def random_adam_moments(model: torch.nn.Module, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Small first and second moments for each of ``model``'s parameters, seeded (``seed``)."""
    generator = torch.Generator().manual_seed(10 + seed)
    return {
        n: (torch.randn(p.shape, generator=generator) * 1e-2, torch.rand(p.shape, generator=generator) * 1e-4)
        for n, p in model.named_parameters()
    }


def hand_adam_steps(model: TwoLayers, moments, matrix: torch.Tensor, sequences) -> torch.Tensor:
    """Each (prompt, response) of ``sequences``' Adam step after one more gradient (β₁ 0.9, β₂ 0.999,
    ε 1e-8, as LESS preconditions), projected by ``matrix`` and scaled to unit length: (sequences, k)."""
    names = [n for n, _ in model.named_parameters()]
    m = torch.cat([moments[n][0].reshape(-1) for n in names]).double()
    v = torch.cat([moments[n][1].reshape(-1) for n in names]).double()
    steps = []
    for prompt, response in zip(*sequences, strict=True):
        g = hand_gradient(model, prompt, response)
        steps.append(unit(((0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g * g + 1e-8)) @ matrix))
    return torch.stack(steps)
