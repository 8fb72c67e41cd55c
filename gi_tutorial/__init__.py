"""gi_tutorial: reference implementations for the gradient-inversion textbook.

Modules: ``config`` (quick mode, seeds, device), ``data`` (datasets, offline sources),
``models`` (victim networks), ``fl`` (the federated threat model), ``analytic``
(closed-form leakage), ``objectives`` (gradient matching), ``priors``, ``spaces``,
``invert`` (the one reconstruction loop), ``separation`` (unmixing a batch from a fully
connected layer's gradient), ``generators`` (the DCGAN prior and its checkpoint), ``giml``
(meta-learning a generator from gradients alone, Reptile), ``defenses`` (noise, clipping,
DP-FedAvg, DP-SGD via Opacus, pruning, privacy accounting), ``metrics``, ``viz`` and
``exercises``.
"""

__version__ = "0.1.0"
