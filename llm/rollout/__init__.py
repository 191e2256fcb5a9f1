"""Where the learner's batches come from.

:mod:`.batch` (the scored batch), :mod:`.generator` (plain or :mod:`.partial`
rollouts, the same object in the trainer's process and in a rollout worker),
:mod:`.sources` (in process, or from rollout ranks), :mod:`.transport`
(weights and batches over ``torch.distributed``), :mod:`.worker` (a rollout
rank's loop) and :mod:`.launch` (one machine without ``torchrun``).
"""
