"""Text data for language-model pretraining and distillation (no ``torch.nn``; floor of ``tasks/``).

=========================  ======================================================================
:mod:`.corpus`             :func:`prepare_corpus` (Debian's KJV Bible and Python docs + retrieval
                           text; sources and licences in its docstring), :func:`iter_documents`
:mod:`.retrieval_text`     RULER-format documents with their answers (needles, key-value lists,
                           variable chains, word lists), seeded
:mod:`.tokenizer`          :func:`train_tokenizer` (byte-level BPE → ``PreTrainedTokenizerFast``)
=========================  ======================================================================
"""

from probseq.data.corpus import CorpusError, CorpusPaths, corpus_paths, iter_documents, prepare_corpus
from probseq.data.retrieval_text import retrieval_document, retrieval_documents
from probseq.data.tokenizer import load_tokenizer, train_tokenizer

__all__ = [
    "CorpusError",
    "CorpusPaths",
    "corpus_paths",
    "iter_documents",
    "load_tokenizer",
    "prepare_corpus",
    "retrieval_document",
    "retrieval_documents",
    "train_tokenizer",
]
