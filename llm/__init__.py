"""The language-model trainer: ``python -m pmdlab.llm.train``.

Hugging Face models (:mod:`.policy`, :mod:`.tiny`, :mod:`.warmstart`), rollout
backends (``generate``, :mod:`.vllm_backend`), verifiable tasks and rewards
(:mod:`.tasks`), evaluation (:mod:`.evaluate`), logging (:mod:`.metrics_log`),
checkpoints (:mod:`.checkpoint`), data parallel (:mod:`.distributed`) and the
TRL and verl integrations (:mod:`.integrations`). The losses, baselines and
update it trains with are :mod:`pmdlab.rl`'s. Everything here but the metrics
log needs the ``llm`` extra (transformers and friends), imported where used.
"""
