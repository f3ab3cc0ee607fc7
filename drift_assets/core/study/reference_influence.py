"""The field's reference implementations of influence, run on our models and sequences (for the LDS).

- :func:`ekfac_scores`: Kronfluence's EK-FAC influence (Grosse et al. 2023; the ``kronfluence``
  package), with its own Hessian approximation fitted on the pool.
- :func:`trak_scores`: TRAK (Park et al. 2023; the ``traker`` package) with its CPU projector
  (``BasicProjector``).

Both give a matrix (pool examples, measured sequences) in the sign convention of our scores: a
positive entry means a gradient step on the example raises the sequence's log-likelihood. Both see
the same sequences, with the same response-only mask, as our gradients (:mod:`sequences`), and the
same ``nn.Linear`` layers (``projection.target_modules``). Neither package is a dependency of
drift_assets: they are the ``bench`` extra, imported here only when called.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence

import numpy as np
import torch

from drift_assets.core.data.sequences import collate_pairs
from drift_assets.core.gradients.projection import target_layers


class TokenPairs(torch.utils.data.Dataset):
    """(prompt ids, response ids) pairs as a torch dataset; :meth:`collate` pads a batch of them."""

    def __init__(self, tokenizer, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]):
        if len(prompt_ids) != len(response_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
        self.tokenizer, self.prompt_ids, self.response_ids = tokenizer, list(prompt_ids), list(response_ids)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, index: int) -> tuple[Sequence[int], Sequence[int]]:
        return self.prompt_ids[index], self.response_ids[index]

    def collate(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
        """A padded batch of items (of any :class:`TokenPairs` with the same tokenizer)."""
        batch = collate_pairs(self.tokenizer, [prompt for prompt, _ in items], [response for _, response in items])
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "response_mask": batch.response_mask}


def response_logprob_terms(model, batch: dict[str, torch.Tensor], sample: bool = False) -> torch.Tensor:
    """(B,) Σ over response tokens of log π(token | prefix): of the batch's own tokens, or
    (``sample``) of tokens drawn from the model's own predictions (the true Fisher's labels)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    if sample:
        with torch.no_grad():
            targets = torch.distributions.Categorical(logits=logits).sample()
    else:
        targets = batch["input_ids"][:, 1:]
    chosen = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (chosen * batch["response_mask"][:, :-1]).sum(dim=1)


def ekfac_scores(
    model,
    tokenizer,
    train: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]],
    queries: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]],
    target_modules: str,
    damping: float | None = None,
    batch_size: int = 32,
    strategy: str = "ekfac",
    seed: int = 0,
) -> np.ndarray:
    """Kronfluence's influence of every training pair on every query pair, (train, queries).

    The training loss is −log π(response | prompt) summed over the response tokens (the gradient
    our training rows project), the measurement −log π of the query's response: Kronfluence's
    score ∇f_qᵀ(G + λI)⁻¹∇L_i is then positive where a step on i raises log π(query).
    ``damping`` None: Kronfluence's heuristic (0.1 × the mean eigenvalue), as our fisher Hessian
    damps; ``strategy`` one of Kronfluence's (``ekfac``, ``kfac``, ``diagonal``, ``identity``).
    The Fisher's labels are sampled from the model: ``seed`` fixes them (the caller's torch random
    state is left as it was).
    """
    from kronfluence import Analyzer, FactorArguments, ScoreArguments, Task, prepare_model
    from kronfluence.utils.dataset import DataLoaderKwargs

    names = [name for name, _ in target_layers(model, target_modules)]

    class SequenceTask(Task):
        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            return -response_logprob_terms(model, batch, sample).sum()

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return -response_logprob_terms(model, batch).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return names

        def get_attention_mask(self, batch) -> torch.Tensor:
            return batch["attention_mask"]

    task = SequenceTask()
    prepared = prepare_model(copy.deepcopy(model).float().cpu(), task)
    train_data, query_data = TokenPairs(tokenizer, *train), TokenPairs(tokenizer, *queries)
    quiet = logging.getLogger("kronfluence").level
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as output, torch.random.fork_rng():
        torch.manual_seed(seed)
        analyzer = Analyzer("lds", prepared, task, cpu=True, disable_tqdm=True, output_dir=output, log_level=logging.WARNING)
        analyzer.fit_all_factors(
            "factors",
            train_data,
            per_device_batch_size=batch_size,
            factor_args=FactorArguments(strategy=strategy),
            dataloader_kwargs=DataLoaderKwargs(collate_fn=train_data.collate),
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            "scores",
            "factors",
            query_data,
            train_data,
            per_device_query_batch_size=batch_size,
            per_device_train_batch_size=batch_size,
            score_args=ScoreArguments(damping_factor=damping),
            dataloader_kwargs=DataLoaderKwargs(collate_fn=query_data.collate),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    logging.getLogger("kronfluence").setLevel(quiet)
    return scores.double().numpy().T  # (train, queries)


def trak_scores(
    model,
    tokenizer,
    train: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]],
    queries: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]],
    target_modules: str,
    proj_dim: int = 1024,
    batch_size: int = 64,
    lambda_reg: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """TRAK's score of every training pair for every query pair, (train, queries), with one model.

    The model output is f = log π(response | prompt) (so its out-to-loss gradient is constant: 1),
    the gradients are of the ``target_modules`` weights, projected by TRAK's ``BasicProjector``
    (normal, ``proj_dim``) in one block; TRAK's score φ_qᵀ(ΦᵀΦ + λI)⁻¹φ_i is positive where a step
    on i raises log π(query).
    """
    from trak import TRAKer
    from trak.gradient_computers import AbstractGradientComputer
    from trak.modelout_functions import AbstractModelOutput
    from trak.projectors import BasicProjector, ProjectionType

    network = copy.deepcopy(model).float().cpu().eval()
    weights = [f"{name}.weight" for name, _ in target_layers(network, target_modules)]
    named = dict(network.named_parameters())

    class LogLikelihood(AbstractModelOutput):
        def __init__(self) -> None:
            super().__init__()

        def get_output(self, model, weights, buffers, input_ids, attention_mask, response_mask) -> torch.Tensor:
            return response_logprob_terms(
                model, {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
            )

        def get_out_to_loss_grad(self, model, weights, buffers, batch) -> torch.Tensor:
            return torch.ones(batch[0].shape[0], 1)

    class PerSequence(AbstractGradientComputer):
        """TRAK's IterativeGradientComputer, but each sequence alone (unpadded) and of ``weights`` only."""

        def __init__(self, model, task, grad_dim, dtype, device, grad_wrt=None):
            super().__init__(model, task, grad_dim, dtype, device)
            self.load_model_params(model)

        def load_model_params(self, model) -> None:
            self.model = model
            self.params = [dict(model.named_parameters())[name] for name in weights]

        def compute_per_sample_grad(self, batch) -> torch.Tensor:
            input_ids, attention_mask, response_mask = batch
            grads = torch.zeros(input_ids.shape[0], self.grad_dim)
            for row in range(input_ids.shape[0]):
                length = int(attention_mask[row].sum())
                one = (
                    input_ids[row : row + 1, :length],
                    attention_mask[row : row + 1, :length],
                    response_mask[row : row + 1, :length],
                )
                output = self.modelout_fn.get_output(self.model, None, None, *one).sum()
                grads[row] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(output, self.params)])
            return grads

        def compute_loss_grad(self, batch) -> torch.Tensor:
            return self.modelout_fn.get_out_to_loss_grad(self.model, None, None, batch)

    grad_dim = sum(named[name].numel() for name in weights)
    projector = BasicProjector(grad_dim, proj_dim, seed, ProjectionType.normal, "cpu", block_size=proj_dim, dtype=torch.float32)
    train_data, query_data = TokenPairs(tokenizer, *train), TokenPairs(tokenizer, *queries)

    def batches(data: TokenPairs):
        for start in range(0, len(data), batch_size):
            collated = data.collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
            yield collated["input_ids"], collated["attention_mask"], collated["response_mask"]

    with tempfile.TemporaryDirectory(prefix="trak-") as output:
        traker = TRAKer(
            network,
            LogLikelihood(),
            len(train_data),
            save_dir=output,
            device="cpu",
            gradient_computer=PerSequence,
            projector=projector,
            use_half_precision=False,
            grad_wrt=weights,
            lambda_reg=lambda_reg,
            logging_level=logging.WARNING,
        )
        state = network.state_dict()
        traker.load_checkpoint(state, model_id=0)
        for batch in batches(train_data):
            traker.featurize(batch, num_samples=batch[0].shape[0])
        traker.finalize_features()
        # finalize_features frees the projection matrix, and BasicProjector regenerates a one-block
        # matrix only for another model id (traker 0.3.2): regenerate it for the queries.
        projector.generate_sketch_matrix(projector.generator_states[0])
        traker.start_scoring_checkpoint("queries", state, model_id=0, num_targets=len(query_data))
        for batch in batches(query_data):
            traker.score(batch, num_samples=batch[0].shape[0])
        scores = np.array(traker.finalize_scores("queries"), dtype=np.float64)
    return scores  # (train, queries)
