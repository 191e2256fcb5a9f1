"""PMD losses inside other trainers: :mod:`.trl` (TRL's GRPO trainer) and :mod:`.verl` (verl's registries).

Both call :mod:`pmdlab.rl.losses` and :mod:`pmdlab.rl.groups`; neither
carries a second copy of a formula. Each imports its host library only
when used (the ``trl`` and ``verl`` extras).
"""
