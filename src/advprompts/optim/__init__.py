"""Prompt optimisation: the loop (:func:`advprompts.optim.loop.optimize`, exported as
``advprompts.optimize``) and its log."""
