"""The built-in arithmetic world (``world``), its exact step verifier (``verify``), the tiny policy the
project trains itself (``policy``) and the method ablation (``ablate``): Step-DPO on a laptop."""
