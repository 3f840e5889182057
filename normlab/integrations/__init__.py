"""Integrations: NormLab's logging (:func:`normlab.log`) as callbacks of the training
frameworks people already use — ``lightning`` (a PyTorch Lightning ``Callback``) and
``huggingface`` (a ``transformers`` ``TrainerCallback``). Each is a thin wrapper over
:class:`normlab.runs.logger.LoggedRun`: the run appears in the store, live in the
dashboard, as an external run. The frameworks are optional: importing a module here
imports its framework, ``import normlab`` imports neither.
"""
