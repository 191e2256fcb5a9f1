"""The language-model trainer: ``python -m pmdlab.llm.train``.

One loop (:mod:`.train`) drives a learner (:mod:`.learner`: the model, its
optimiser and one update per batch) and a batch source
(:mod:`.rollout`: the generator in this process, or on rollout ranks).
Hugging Face models (:mod:`.policy`, :mod:`.tiny`, :mod:`.warmstart`), rollout
backends (``generate``, :mod:`.vllm_backend`), verifiable tasks and rewards
(:mod:`.tasks`), evaluation (:mod:`.evaluate`), logging (:mod:`.metrics_log`,
:mod:`.sinks`), checkpoints (:mod:`.checkpoint`), stop signals
(:mod:`.stopping`), data parallel (:mod:`.distributed`) and the TRL and verl
integrations (:mod:`.integrations`). The losses, baselines and update it
trains with are :mod:`pmdlab.rl`'s. Everything here but the metrics log needs
the ``llm`` extra (transformers and friends), imported where used.
"""
