"""Language models built from the mixers of :mod:`probseq.layers` (ARCHITECTURE, floor 3).

- :class:`ProbSeqConfig` (``model_type = "probseq"``), :class:`ProbSeqModel`, :class:`ProbSeqForCausalLM`;
- :class:`ProbSeqCache`, the per-layer decoding cache ``generate`` runs on.

Importing this package registers them with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from probseq.models.cache import ProbSeqCache, ProbSeqCacheLayer
from probseq.models.configuration import ProbSeqConfig
from probseq.models.modeling import ProbSeqForCausalLM, ProbSeqModel, ProbSeqPreTrainedModel

AutoConfig.register(ProbSeqConfig.model_type, ProbSeqConfig, exist_ok=True)
AutoModel.register(ProbSeqConfig, ProbSeqModel, exist_ok=True)
AutoModelForCausalLM.register(ProbSeqConfig, ProbSeqForCausalLM, exist_ok=True)

__all__ = ["ProbSeqCache", "ProbSeqCacheLayer", "ProbSeqConfig", "ProbSeqForCausalLM", "ProbSeqModel",
           "ProbSeqPreTrainedModel"]
