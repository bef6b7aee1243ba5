"""Concentration of attention on a prompt (NeurIPS 2024, arXiv `2406.10584 <https://arxiv.org/abs/2406.10584>`_):
the strength metric and its recorder (:mod:`~densattn.concentration.metrics`), soft prompts with the
concentration-reweighting loss (:mod:`~densattn.concentration.prompting`), and the domain-generalisation experiment
(:mod:`~densattn.concentration.experiment`)."""
