import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two busy threads on two cores make generation 10–40x slower; tests are small anyway.
torch.set_num_threads(1)


@pytest.fixture
def tiny_lm_dir(tmp_path):
    from tests.tiny import save, tiny_causal_lm

    model, tok = tiny_causal_lm(seed=0)
    return save(model, tok, tmp_path / "tiny-lm")


@pytest.fixture
def tiny_rm_dir(tmp_path):
    from tests.tiny import save, tiny_classifier

    model, tok = tiny_classifier(seed=0)
    return save(model, tok, tmp_path / "tiny-rm")
