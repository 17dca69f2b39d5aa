"""Experiments on top of the stages: the demo (the whole loop at toy size), the paper's ablation and its
settings sweep. They orchestrate stages, training, serving and evaluation; nothing below imports them."""
