"""The regression design — the Bayesian Layer — in three forms with one signature: the reference token
loop (:func:`probseq.design.reference_filter`), :mod:`.recurrent` (decoding) and :mod:`.chunked`
(training); :mod:`.filter` holds the public entry points (exported by :mod:`probseq.ops`; imported there, not here, so
that the dispatcher can import the forms without a cycle)."""
