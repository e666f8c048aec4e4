"""Language models built from the mixers of :mod:`probseq.layers` (docs/architecture.md, floor 3: imports layers and
ops, never interop or the evidence code).

- :class:`ProbSeqConfig` (``model_type = "probseq"``), :class:`ProbSeqModel`, :class:`ProbSeqForCausalLM`;
- :class:`ProbSeqCache`, the per-layer decoding cache ``generate`` runs on;
- :class:`ZoologyConfig` (``model_type = "probseq_zoology"``), :class:`ZoologyModel`: Zoology's MQAR architecture,
  ``[short-conv block, mixer] × n`` without MLPs (:mod:`probseq.models.mqar_model`), the model of the recall
  experiments.

Importing this package registers them with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``
(``ZoologyModel`` with ``AutoModel`` only).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from probseq.models.cache import ProbSeqCache, ProbSeqCacheLayer
from probseq.models.configuration import ProbSeqConfig
from probseq.models.modeling import ProbSeqForCausalLM, ProbSeqModel, ProbSeqPreTrainedModel
from probseq.models.mqar_model import ZoologyConfig, ZoologyModel

AutoConfig.register(ProbSeqConfig.model_type, ProbSeqConfig, exist_ok=True)
AutoModel.register(ProbSeqConfig, ProbSeqModel, exist_ok=True)
AutoModelForCausalLM.register(ProbSeqConfig, ProbSeqForCausalLM, exist_ok=True)

__all__ = [
    "ProbSeqCache",
    "ProbSeqCacheLayer",
    "ProbSeqConfig",
    "ProbSeqForCausalLM",
    "ProbSeqModel",
    "ProbSeqPreTrainedModel",
    "ZoologyConfig",
    "ZoologyModel",
]
