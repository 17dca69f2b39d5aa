"""Step-DPO training on Ray Train + DeepSpeed.

pairs.py (tokenize, truncate, pack with prefix sharing) -> step.py (log-probs + loss for one batch,
no Ray) with loss.py and reference.py -> loop.py (the Ray Train worker loop: DeepSpeed, checkpoints,
resume) -> export.py (HF folder) ; plan.py fixes the data order, metrics.py the step log and plots,
run.py is the stage entry (``run(config)``) and the ``raystep train`` command.
"""
