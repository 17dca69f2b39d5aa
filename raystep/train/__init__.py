"""Step-DPO training on Ray Train + DeepSpeed.

pairs.py (tokenize, truncate, pack with prefix sharing) -> batch_loss.py (log-probs + loss for one
batch, no Ray) with loss.py and reference.py -> loop.py (the Ray Train worker recipe: setup parts,
the step loop, checkpoints, resume) -> export.py (HF folder); plan.py fixes the data order, metrics.py
the step sums, step log and plots, tracking.py MLflow / W&B, run.py is the stage entry (``run(config)``)
and the ``raystep train`` command.
"""
