"""Partial rollouts (Kimi K1.5, §2.6.2): long responses are generated a budget of tokens at a time,
across policy versions.

Each iteration a rollout worker draws ``prompts`` new problems and samples
their ``n`` responses, and continues every unfinished response it carried
over, all for at most ``partial_tokens`` new tokens each, from the weights
it has now. A response is finished at its end-of-sequence token or at
``max_new_tokens``; a group is finished when its ``n`` responses are. The
batch handed to the trainer is the ``prompts`` oldest finished groups; the
worker iterates (drawing new problems) until it has that many. A response
finishes within ``K = ceil(max_new_tokens / partial_tokens)`` iterations, so
once ``K`` have run every further iteration finishes the groups started ``K``
before it: at most ``(K + 1) * prompts`` groups are ever in progress (tested).

Every token keeps the version that produced it and its ``log pi_old``
under that version's weights (a forward pass of those weights over the
prompt and the response so far; with ``old_source="sampler"`` the sampler's
own log-probs, and the batch carries no behaviour log-probs), so the loss's ratio for token ``t`` is
``pi_theta(y_t | x, y_<t) / pi_{v_t}(y_t | x, y_<t)``: the policy that
actually sampled it. A group any of whose tokens would lag more than
``max_staleness`` versions at the step it is trained on is dropped and
counted (``async/dropped_groups``).

Carrying spends the lag budget: a response continued over ``K - 1`` more
batches is trained ``K - 1`` versions after its first token was made. So a
worker with partial rollouts samples at most ``max_staleness - (K - 1)``
versions ahead of the trainer (:func:`sampling_lead`), and a response that
finishes in its ``K`` iterations is trained within the bound.

A worker's groups in progress travel with each batch it sends
(:meth:`PartialRollouts.state`), so a checkpoint holds those of the last
batch it took and ``--resume`` continues them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from pmdlab.rl.rollout import Rollout

from .batch import ScoredBatch, batch_stats

__all__ = ["PartialRollouts", "Response", "next_partial_batch", "sampling_lead"]


def sampling_lead(max_staleness: int, max_new_tokens: int, partial_tokens: int) -> int:
    """How many versions ahead of the trainer a rollout worker samples: batch ``b`` comes from a
    version ``>= b - lead``.

    ``lead = k`` without partial rollouts (``partial_tokens = 0``); with them
    ``lead = max(0, k - (K - 1))``, ``K = ceil(max_new_tokens / partial_tokens)``: a response started
    while making batch ``b0`` (version ``>= b0 - lead``) and finished ``K - 1`` batches later lags at
    most ``lead + K - 1 <= k`` versions at the step it is trained. With ``k < K - 1`` the worker
    samples from the trainer's newest weights (lead 0) and responses that take more than ``k + 1``
    batches are dropped.
    """
    if partial_tokens == 0:
        return max_staleness
    iterations = -(-max_new_tokens // partial_tokens)
    return max(0, max_staleness - (iterations - 1))


@dataclass
class Response:
    """One response in progress: its tokens so far, each token's ``log pi_old`` and version."""

    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    old: list[float] = field(default_factory=list)
    sampler: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    done: bool = False


@dataclass
class Group:
    problem: object
    responses: list[Response]

    @property
    def done(self) -> bool:
        return all(r.done for r in self.responses)

    @property
    def oldest(self) -> int:
        return min(v for r in self.responses for v in r.versions if r.versions)


class PartialRollouts:
    """A worker's partial-rollout state: the groups in progress, oldest first (see the module docstring)."""

    def __init__(self, policy, task, reward, n: int, budget: int, behaviour_pass: bool):
        if budget < 1:
            raise ValueError(f"partial_tokens must be at least 1, got {budget}")
        self.policy, self.task, self.reward, self.n = policy, task, reward, n
        self.budget, self.behaviour_pass = budget, behaviour_pass
        self.groups: list[Group] = []
        self.dropped = 0

    def state(self) -> dict:
        """The groups in progress and the drop count, as plain data (what a checkpoint holds)."""
        return {
            "groups": [(g.problem, [dataclasses.asdict(r) for r in g.responses]) for g in self.groups],
            "dropped": self.dropped,
        }

    def set_state(self, state: dict) -> None:
        """Continue from :meth:`state`."""
        self.groups = [Group(p, [Response(**r) for r in rs]) for p, rs in state["groups"]]
        self.dropped = state["dropped"]

    def start(self, problems: list) -> None:
        """New groups for ``problems``, behind those in progress."""
        for p in problems:
            ids, mask = self.policy.encode([p.prompt])
            prompt = ids[0][mask[0] > 0].tolist()
            self.groups.append(Group(p, [Response(list(prompt)) for _ in range(self.n)]))

    @torch.no_grad()
    def extend(self, version: int) -> int:
        """Every unfinished response, ``budget`` more tokens from the current weights; the tokens made."""
        active = [r for g in self.groups for r in g.responses if not r.done]
        if not active:
            return 0
        policy, pad = self.policy, self.policy.tokenizer.pad_token_id
        limit = policy.sampling.max_new_tokens
        rows = [r.prompt_ids + r.tokens for r in active]
        width = max(len(x) for x in rows)
        device = policy.device
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=device)
        sampling = dataclasses.replace(policy.sampling, max_new_tokens=self.budget)
        tokens, sampler, rmask = policy.backend.generate(ids, mask, 1, sampling)
        allowance = torch.tensor([limit - len(r.tokens) for r in active], device=device)
        rmask = rmask * (torch.arange(tokens.shape[1], device=device) < allowance[:, None])
        if not self.behaviour_pass:
            old = sampler
        else:  # this version's log-probs of the new tokens, given everything before them
            segment = Rollout(
                group_ids=torch.arange(len(active), device=device),
                tokens=tokens,
                mask=rmask,
                prompts=ids,
                extras={"prompt_mask": mask},
            )
            old, _ = policy.log_probs_and_entropy(segment)
        eos = policy.tokenizer.eos_token_id
        made = 0
        for i, r in enumerate(active):
            count = int(rmask[i].sum())
            new = tokens[i, :count].tolist()
            r.tokens += new
            r.old += old[i, :count].tolist()
            r.sampler += sampler[i, :count].tolist()
            r.versions += [version] * count
            # a response that stopped short of its budget ended (on whichever end token the backend
            # stopped); one that used it all ended if its last token is the eos
            r.done = count < self.budget or (count > 0 and new[-1] == eos) or len(r.tokens) >= limit
            made += count
        return made

    def take(self, count: int, floor: int) -> list[Group]:
        """The ``count`` oldest finished groups (``[]`` if fewer are finished); groups with a token
        older than version ``floor`` are dropped first and counted."""
        kept = []
        for g in self.groups:  # a group too old now stays too old: drop it finished or not
            if any(r.versions for r in g.responses) and g.oldest < floor:
                self.dropped += 1
            else:
                kept.append(g)
        self.groups = kept
        finished = [g for g in self.groups if g.done][:count]
        if len(finished) < count:
            return []
        taken = {id(g) for g in finished}
        self.groups = [g for g in self.groups if id(g) not in taken]
        return finished

    def batch(self, groups: list[Group], version: int, elapsed: float) -> ScoredBatch:
        """The finished ``groups`` as a scored batch."""
        policy, n = self.policy, self.n
        responses = [r for g in groups for r in g.responses]
        device = policy.device
        pad = policy.tokenizer.pad_token_id
        plen = max(len(r.prompt_ids) for r in responses)
        width = max(1, max(len(r.tokens) for r in responses))

        def right(values, fill):
            return [v + [fill] * (width - len(v)) for v in values]

        prompts = torch.tensor([[pad] * (plen - len(r.prompt_ids)) + r.prompt_ids for r in responses])
        pmask = torch.tensor([[0] * (plen - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in responses])
        tokens = torch.tensor(right([r.tokens for r in responses], pad))
        mask = torch.tensor(right([[1.0] * len(r.tokens) for r in responses], 0.0))
        versions = torch.tensor(right([r.versions for r in responses], version))
        rollout = Rollout(
            group_ids=torch.arange(len(groups)).repeat_interleave(n),
            tokens=tokens,
            mask=mask,
            sampler_logprobs=torch.tensor(right([r.sampler for r in responses], 0.0)),
            prompts=prompts,
            extras={"prompt_mask": pmask},
        )
        texts = policy.tokenizer.batch_decode([r.tokens for r in responses], skip_special_tokens=True)
        hits = [self.task.is_correct(t, groups[i // n].problem) for i, t in enumerate(texts)]
        rollout.rewards = torch.tensor([self.reward(h) for h in hits], dtype=torch.float32)
        spans = [len(set(r.versions)) for r in responses]
        stats = {
            **batch_stats(rollout, hits, n, None, elapsed, version),
            "async/partial_multi_version": sum(s > 1 for s in spans) / len(spans),
            "async/partial_carried": float(sum(not r.done for g in self.groups for r in g.responses)),
            "async/dropped_groups": float(self.dropped),
        }
        old = torch.tensor(right([r.old for r in responses], 0.0), device=device)
        return ScoredBatch(
            rollout=rollout.to(device),
            behaviour=old if self.behaviour_pass else None,
            version=int(versions[mask > 0].min()),
            stats=stats,
            versions=versions.to(device),
        )


def next_partial_batch(
    state: PartialRollouts, draw, prompts: int, version: int, floor: int, seed: int
) -> ScoredBatch:
    """Iterate (new problems from ``draw()``, every response ``budget`` tokens further) until
    ``prompts`` groups are finished; the batch of the oldest of them."""
    start = time.perf_counter()
    iteration = 0
    while True:
        groups = state.take(prompts, floor)
        if groups:
            return state.batch(groups, version, time.perf_counter() - start)
        state.start(draw())
        torch.manual_seed(seed + iteration)
        state.extend(version)
        iteration += 1
