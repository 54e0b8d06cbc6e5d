"""The toy world: this repo's stand-in for LAION, CLIP and MS-COCO (no image data or weights can be downloaded).

SnapFusion's stages know nothing of it; it plugs in by name:

- ``world.py``: the procedural world of captioned 64x64 scenes.
- ``dataset.py``: ``--data toy[:seed=N]`` (the registry in ``training/data.py``), and the vocabulary of a
  from-scratch tokenizer.
- ``caption_objective.py``: ``train_teacher --text-objective toy``, pre-training a from-scratch text encoder.
- ``prompts.py``: the recipe's prompt-writing stage (``"module": "toy.prompts"``).
- ``probe.py``, ``metrics.py``, ``evaluation.py``: the probe, text alignment and FID, and the evaluation that
  ``python -m training.evaluate`` runs.
- ``scorer.py``: ``evolve --scorer toy``, the architecture search's quality measure.
"""
