"""The labs: each one makes a claim of the normalization literature checkable on live runs.

A lab is data (:class:`~normlab.views.labs.scaffold.Lab`): the claim in plain sentences,
what to look for, and one-click presets (:class:`~normlab.views.labs.scaffold.Preset`,
the configs a preset launches through the engine). Each lab module adds what its page
draws — frames, Altair chart builders, and a one-line readout computed from the runs
shown, never written in advance. Streamlit-free, like every module under ``normlab/views``:
the pages in ``pages/`` draw these through :mod:`normlab.ui.lab`.

* :mod:`~normlab.views.labs.formula` — Lab 1, one formula (x → x̂ → y → f(y) stage by
  stage; "mean b and variance g²" per feature; the near-linear share at x̂ and y);
* :mod:`~normlab.views.labs.whitening` — Lab 2, how far from whitening (correlation
  matrices, covariance spectra, per-feature spreads; which methods decorrelate);
* :mod:`~normlab.views.labs.ics` — Lab 3, internal covariate shift (drift of each layer's
  input with its sampling noise, Santurkar et al.'s gradient ICS, smoothness);
* :mod:`~normlab.views.labs.invariance` — Lab 4, re-scaling invariance (Ba et al. 2016,
  Table 1, computed live; the gradient's 1/λ; weight growth over training);
* :mod:`~normlab.views.labs.sensitivity` — Lab 5, learning rate and initialization, and
  Lab 6, batch size, both read through the sweep view (:mod:`normlab.views.sweep`);
* :mod:`~normlab.views.labs.sections` — every lab page's charts, tables and readouts at
  the page's defaults, for the lab's report (and which lab launched a comparison).
"""
