"""Tiny models built in code for tests: a character-level tokenizer (≈100 tokens), a 2-layer Llama
causal LM and a 2-layer BERT classifier on top of it. A few hundred KB each, no hub, no assets."""
from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.ascii_letters + string.digits + string.punctuation + " \n")


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>", padding_side="left")


def tiny_causal_lm(seed: int = 0, hidden: int = 32, layers: int = 2):
    """(model, tokenizer): a randomly initialised Llama with the char tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


def tiny_classifier(seed: int = 0, hidden: int = 32, layers: int = 2):
    """(model, tokenizer): a randomly initialised 2-label BERT classifier (labels negative/positive)."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = tiny_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                     num_attention_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).eval(), tok


def save(model, tokenizer, path: str | Path) -> Path:
    """Save as a Hugging Face directory with safetensors, like every checkpoint in the project."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
