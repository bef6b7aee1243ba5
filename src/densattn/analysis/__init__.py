"""What trained runs show: layer explanations (:mod:`~densattn.analysis.explain`: the Importance Factor of
:mod:`~densattn.analysis.importance`, occlusion, gradient × input and integrated gradients of
:mod:`~densattn.analysis.attribution`) and how faithful they are (:mod:`~densattn.analysis.faithfulness`, the
synthetic check of :mod:`~densattn.analysis.sanity`, the retraining ablation of :mod:`~densattn.analysis.ablation`),
runs seen as functions of their layers (:mod:`~densattn.analysis.runs`), robustness to input shifts
(:mod:`~densattn.analysis.robustness`), paired fold statistics (:mod:`~densattn.analysis.stats`), run comparison
tables (:mod:`~densattn.analysis.compare`), evaluation of any adapter (:mod:`~densattn.analysis.evaluate`) and what
DAAM's parameters learned (:mod:`~densattn.analysis.daam_report`). Submodules load on first use."""
