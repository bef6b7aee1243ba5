"""What trained runs show: the Importance Factor (:mod:`~densattn.analysis.importance`), IF layer ablation
(:mod:`~densattn.analysis.ablation`), robustness to input shifts (:mod:`~densattn.analysis.robustness`), paired
fold statistics (:mod:`~densattn.analysis.stats`), run comparison tables (:mod:`~densattn.analysis.compare`),
evaluation of any adapter (:mod:`~densattn.analysis.evaluate`) and what DAAM's parameters learned
(:mod:`~densattn.analysis.daam_report`). Submodules load on first use."""
