"""lm-eval task YAMLs over local data (offline defaults): champ_math, synth_gsm8k. See utils.py."""
